# Counts and proportions against R (issue 12): glmer with binomial trials, Poisson with an exposure offset, glmer.nb,
# glm on the sum-to-zero dummy design, and Gaussian prior weights (lmer, lm), on R's OWN copies of two public data
# sets. Writes the numbers, 17 significant digits, to tests/data/glm_reference.csv; the Python tests read the same
# data from tests/data/glmm_cbpp.csv and glmm_mmmec.csv, which tests/data/glmm_reference.R writes from these R
# objects (one copy of each data set). Run from the repository root:
#   Rscript tests/data/glm_reference.R
# (R 4.2.2, lme4 1.1-31, mlmRev 1.0-8, lmerTest 3.1-3, Debian bookworm packages.)
# * cbpp (lme4): contagious bovine pleuropneumonia, new cases (incidence) among the herd's size, 15 herds x 4 periods.
# * Mmmec (mlmRev): malignant melanoma deaths in 354 counties of 78 regions of 9 EC nations, with the expected
#   count (exposure) and UV-B dose (Langford, Bentham & McDonald 1998).
# glmer / glmer.nb: the best of lme4's optimizers (bobyqa, Nelder_Mead, nloptwrap) by log-likelihood.
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(lmerTest)})
cbpp <- lme4::cbpp
mmmec <- mlmRev::Mmmec
mmmec$lsmr <- log((mmmec$deaths + 0.5) / mmmec$expected)  # a log standardised mortality ratio (Gaussian cases)
mmmec$ldeaths <- log(mmmec$deaths + 0.5)

rows <- list()
add <- function(case, kind, name, value) rows[[length(rows) + 1L]] <<- data.frame(
  case = case, kind = kind, name = name, value = sprintf("%.17g", value))
best <- function(fit_with) {
  fits <- lapply(c("bobyqa", "Nelder_Mead", "nloptwrap"), function(o) suppressWarnings(fit_with(o)))
  fits[[which.max(sapply(fits, function(x) as.numeric(logLik(x))))]]
}
mixed <- function(case, m) {
  add(case, "loglik", if (isREML(m)) "REML" else "ML", as.numeric(logLik(m)))
  fe <- fixef(m); se <- sqrt(diag(as.matrix(vcov(m))))
  for (i in seq_along(fe)) { add(case, "fixef", names(fe)[i], fe[[i]]); add(case, "fixef_se", names(fe)[i], se[[i]]) }
  vc <- as.data.frame(VarCorr(m))
  for (i in seq_len(nrow(vc))) {
    term <- paste0("sd__", ifelse(vc$grp[i] == "Residual", "Observation", vc$var1[i]))
    add(case, "ran_pars", paste0(vc$grp[i], "|", term), vc$sdcor[i])
  }
  re <- as.data.frame(ranef(m, condVar = TRUE))
  for (i in seq_len(nrow(re))) {
    add(case, "ranef", paste0(re$grpvar[i], "|", re$grp[i]), re$condval[i])
    add(case, "ranef_sd", paste0(re$grpvar[i], "|", re$grp[i]), re$condsd[i])
  }
}

f_cbpp <- cbind(incidence, size - incidence) ~ period + (1 | herd)
m <- best(function(o) glmer(f_cbpp, data = cbpp, family = binomial, control = glmerControl(optimizer = o)))
mixed("cbpp_glmer", m)
f_mm <- deaths ~ uvb + offset(log(expected)) + (1 | nation) + (1 | nation:region)
m <- best(function(o) glmer(f_mm, data = mmmec, family = poisson, control = glmerControl(optimizer = o)))
mixed("mmmec_poisson", m)
m <- best(function(o) glmer.nb(f_mm, data = mmmec, control = glmerControl(optimizer = o)))
mixed("mmmec_nb", m)
add("mmmec_nb", "theta", "theta", getME(m, "glmer.nb.theta"))

# Gaussian prior weights and a Gaussian offset (REML), with lmerTest's Satterthwaite df
lmer_case <- function(case, m) {
  mixed(case, m)
  df <- summary(m)$coefficients[, "df"]
  for (i in seq_along(df)) add(case, "df", names(df)[i], df[[i]])
}
lmer_case("mmmec_weighted_lmer", lmerTest::lmer(lsmr ~ uvb + (1 | nation) + (1 | nation:region), data = mmmec,
                                                weights = expected, REML = TRUE))
lmer_case("mmmec_offset_lmer", lmerTest::lmer(ldeaths ~ uvb + offset(log(expected)) + (1 | nation) +
                                                (1 | nation:region), data = mmmec, REML = TRUE))

# glm / lm with the grouping factor in sum-to-zero coding (contr.sum): the deviations of every group are
# C %*% coef with SEs from C V C' (glm at epsilon = 1e-12: its default 1e-8 leaves the SEs 1e-7 from converged;
# glm.nb at its defaults, whose theta.ml stops at steps of 1.2e-4)
fixed_effects <- function(case, g, factor_name, levels) {
  b <- coef(g); V <- vcov(g)
  add(case, "loglik", "ML", as.numeric(logLik(g)))
  keep <- !startsWith(names(b), factor_name)
  for (n in names(b)[keep]) { add(case, "fixef", n, b[[n]]); add(case, "fixef_se", n, sqrt(V[n, n])) }
  idx <- which(startsWith(names(b), factor_name))
  C <- contr.sum(length(levels))
  dev <- C %*% b[idx]; dse <- sqrt(diag(C %*% V[idx, idx] %*% t(C)))
  for (i in seq_along(levels)) {
    add(case, "ranef", paste0(factor_name, "|", levels[i]), dev[i])
    add(case, "ranef_sd", paste0(factor_name, "|", levels[i]), dse[i])
  }
}
tight <- glm.control(epsilon = 1e-12, maxit = 100)
g <- glm(cbind(incidence, size - incidence) ~ period + herd, data = cbpp, family = binomial,
         contrasts = list(herd = "contr.sum"), control = tight)
fixed_effects("cbpp_glm", g, "herd", levels(cbpp$herd))
g <- glm(deaths ~ uvb + offset(log(expected)) + nation, data = mmmec, family = poisson,
         contrasts = list(nation = "contr.sum"), control = tight)
fixed_effects("mmmec_glm", g, "nation", levels(mmmec$nation))
g <- MASS::glm.nb(deaths ~ uvb + offset(log(expected)) + nation, data = mmmec, contrasts = list(nation = "contr.sum"))
fixed_effects("mmmec_glm_nb", g, "nation", levels(mmmec$nation))
add("mmmec_glm_nb", "theta", "theta", g$theta)
g <- lm(lsmr ~ uvb + nation, data = mmmec, weights = expected, contrasts = list(nation = "contr.sum"))
fixed_effects("mmmec_weighted_lm", g, "nation", levels(mmmec$nation))
add("mmmec_weighted_lm", "sigma", "sigma", summary(g)$sigma)

write.csv(do.call(rbind, rows), "tests/data/glm_reference.csv", row.names = FALSE)
