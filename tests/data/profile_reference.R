# Reference numbers for tests/test_profile.py: lme4's profile-likelihood intervals of the variance parameters,
# confint(fit, method = "profile"), on the committed CSV copies of public data sets (hiercompare/data/*.csv,
# tests/data/sleepstudy.csv, tests/data/dyestuff2.csv = lme4::Dyestuff2, whose batch SD is on the boundary).
#
# Regenerate (from the repository root):  Rscript tests/data/profile_reference.R
# which writes tests/data/profile_reference.csv (17 significant digits; lme4 1.1-31, R 4.2.2 when written).
#
# One row per (data set, formula, REML or ML fit, variance parameter): `name` is "group|term" in hiercompare's
# names (sd__<term>, cor__<term1>.<term2>, Residual|sd__Observation), `estimate` the fit's own value (REML or ML),
# conf_low / conf_high the 95% profile interval. lme4's profile() refits by ML first (refitML), so a REML fit and
# an ML fit get the same intervals (up to the optimizer); both are stored. Only the variance parameters are
# profiled (parm = "theta_"). An interval end that lme4 reports as NA is written as NA.
#
# confint() reads each end off a spline through the profile's grid (backSpline), which is coarse where the profile
# is flat. So zeta_low / zeta_high are lme4's exact zeta AT its reported ends: its own deviance (devfun2, the one
# profile() uses), minimised over the other parameters at that value (nloptwrap with tight tolerances, then
# L-BFGS-B from its result). Where that is not +-1.96, the end is off by lme4's interpolation (or by its profile's
# own inner optimisation), not by the profile: Oats' Block SD has zeta -1.9583 at lme4's lower end 2.7867, and
# -1.9600 at 2.7658.

hc_profile_sets <- list(
  sleepstudy = list(file = "tests/data/sleepstudy.csv", factors = "Subject", formulas = c(
    "Reaction ~ Days + (Days | Subject)",
    "Reaction ~ Days + (Days || Subject)")),
  pastes = list(file = "hiercompare/data/pastes.csv", factors = c("batch", "cask"), formulas = c(
    "strength ~ 1 + (1 | batch) + (1 | batch:cask)",
    "strength ~ 1 + (1 | batch:cask)")),
  exam = list(file = "hiercompare/data/exam.csv", factors = "school", formulas = c(
    "normexam ~ standLRT + (1 | school)",
    "normexam ~ standLRT + schavg + (1 + standLRT | school)")),
  oats = list(file = "hiercompare/data/oats.csv", factors = c("Block", "Variety"), formulas = c(
    "yield ~ nitro + (1 | Block) + (1 | Block:Variety)",
    "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)")),
  dietox = list(file = "hiercompare/data/dietox.csv", factors = c("Litter", "Pig"), formulas = c(
    "Weight ~ Time + (1 | Litter) + (1 | Litter:Pig)",
    "Weight ~ Time + (1 | Litter) + (1 + Time | Litter:Pig)")),
  dyestuff2 = list(file = "tests/data/dyestuff2.csv", factors = "Batch", formulas = c(
    "Yield ~ 1 + (1 | Batch)"))
)

# lme4's profile parameters in its own order (.sig01, .sig02, ..., .sigma): per random-effects term, the lower
# triangle of the sd/cor matrix column by column (sd on the diagonal), then the residual SD.
hc_profile_names <- function(fit) {
  cnms <- lme4::getME(fit, "cnms")
  out <- character(0)
  for (g in seq_along(cnms)) {
    grp <- sub("\\.[0-9]+$", "", names(cnms)[g])  # (a || g) splits g into g, g.1, ...
    nm <- cnms[[g]]
    for (j in seq_along(nm)) for (i in j:length(nm)) out <- c(out, if (i == j) paste0(grp, "|sd__", nm[i])
                                                               else paste0(grp, "|cor__", nm[j], ".", nm[i]))
  }
  c(out, "Residual|sd__Observation")
}

# zeta(w, value): lme4's signed square root of (profiled ML deviance - its minimum) with parameter w (in lme4's
# order) fixed at value, the others (sd, cor, sigma; the fixed effects are profiled out) minimised as profile() does.
hc_exact_zeta <- function(fit) {
  dd <- lme4:::devfun2(fit, useSc = TRUE, signames = TRUE)
  base <- attr(dd, "basedev")
  nvp <- length(lme4::getME(fit, "theta")) + 1L
  opt <- attr(dd, "optimum")[seq_len(nvp)]
  lower <- c(pmax(fit@lower, -1), 0)
  upper <- c(ifelse(fit@lower == 0, Inf, 1), Inf)
  function(w, value) {
    if (is.na(value)) return(NA_real_)
    if (value == opt[w]) return(0)
    fn <- function(x) { p <- numeric(nvp); p[w] <- value; p[-w] <- x; dd(p) }
    o <- lme4:::optwrap("nloptwrap", par = opt[-w], fn = fn, lower = lower[-w], upper = upper[-w],
                        control = list(xtol_abs = 1e-12, ftol_abs = 1e-12, ftol_rel = 1e-15, maxeval = 100000))
    # nloptwrap alone can stall (Exam, the correlation at its lower end: 0.0023 above the minimum); polish
    lo <- lower[-w]; lo[length(lo)] <- max(lo[length(lo)], 1e-8 * opt[nvp])  # sigma > 0
    o2 <- stats::optim(pmax(o$par, lo), fn, method = "L-BFGS-B", lower = lo, upper = upper[-w],
                       control = list(factr = 1, pgtol = 0, maxit = 10000))
    sign(value - opt[w]) * sqrt(max(min(o$fval, o2$value) - base, 0))
  }
}

hc_profile_reference <- function(root = ".", out = file.path(root, "tests/data/profile_reference.csv")) {
  suppressPackageStartupMessages(library(lme4))
  rows <- list()
  for (name in names(hc_profile_sets)) {
    set <- hc_profile_sets[[name]]
    data <- read.csv(file.path(root, set$file))
    for (f in set$factors) data[[f]] <- factor(data[[f]])
    for (formula in set$formulas) for (reml in c(TRUE, FALSE)) {
      fit <- lmer(as.formula(formula), data = data, REML = reml)
      ci <- suppressMessages(confint(fit, parm = "theta_", method = "profile", oldNames = TRUE))
      est <- lme4:::Cv_to_Sv(getME(fit, "theta"), lengths(getME(fit, "cnms")), s = sigma(fit))
      nms <- hc_profile_names(fit)
      stopifnot(nrow(ci) == length(nms), length(est) == length(nms))
      zeta <- hc_exact_zeta(fit)
      rows[[length(rows) + 1L]] <- data.frame(
        dataset = name, formula = formula, method = if (reml) "REML" else "ML", name = nms,
        estimate = sprintf("%.17g", est), conf_low = sprintf("%.17g", ci[, 1]),
        conf_high = sprintf("%.17g", ci[, 2]),
        zeta_low = sprintf("%.17g", sapply(seq_along(nms), function(w) zeta(w, ci[w, 1]))),
        zeta_high = sprintf("%.17g", sapply(seq_along(nms), function(w) zeta(w, ci[w, 2]))))
    }
  }
  table <- do.call(rbind, rows)
  for (col in c("conf_low", "conf_high", "zeta_low", "zeta_high")) table[[col]][table[[col]] == "NA"] <- NA
  write.csv(table, out, row.names = FALSE)
  invisible(table)
}

if (sys.nframe() == 0L) hc_profile_reference()
