# glmer's fits of the GLMM test cases of tests/test_glmmcore.py, on R's OWN copies of the data (lme4::cbpp,
# lme4::grouseticks, mlmRev::Contraception, mlmRev::guImmun, mlmRev::Mmmec; Debian r-cran-lme4, r-cran-mlmrev),
# written with 17 significant digits to tests/data/glmm_reference.csv. The same data go to
# tests/data/glmm_<name>.csv (what the Python tests read: 0/1 responses and indicators, text factors).
# Run from the repository root: Rscript tests/data/glmm_reference.R (lme4 1.1-31, R 4.2.2).
#
# Every case is fitted with each of lme4's optimizers below; the reference is the one with the highest
# log-likelihood ("the best of lme4's optimizers"); every optimizer's log-likelihood is written too
# (kind "loglik_by_optimizer"), so a test can say where lme4's optimizers disagree with each other.
# glmer's default tolPwrss = 1e-7 (the inner penalised IRLS stops when the relative change of the penalised
# weighted RSS is below it) leaves its Laplace deviance inexact by up to ~1e-3 on these data (cbpp: logLik
# -92.02657 at tolPwrss 1e-7, -92.02628 at 1e-10 and 1e-13, with estimates that move by ~3e-4 relative), so two
# of the controls also set tolPwrss = 1e-12.
# allFit's other optimizers need dfoptim and optimx, which Debian does not package.
suppressPackageStartupMessages({library(lme4); library(mlmRev)})
yn <- function(f) as.numeric(as.character(f) == "Y")

cbpp <- lme4::cbpp
cbpp <- data.frame(herd = as.integer(as.character(cbpp$herd)), incidence = cbpp$incidence, size = cbpp$size,
                   period = as.integer(as.character(cbpp$period)))
contra <- mlmRev::Contraception
contra <- data.frame(woman = as.integer(as.character(contra$woman)),
                     district = as.integer(as.character(contra$district)), use = yn(contra$use),
                     livch = as.character(contra$livch), age = contra$age, urban = yn(contra$urban))
gi <- mlmRev::guImmun
immun <- data.frame(kid = as.integer(as.character(gi$kid)), mom = as.integer(as.character(gi$mom)),
                    comm = as.integer(as.character(gi$comm)), immun = yn(gi$immun))
for (v in c("kid2p", "mom25p", "ord", "ethn", "momEd", "husEd", "momWork", "rural")) immun[[v]] <- as.character(gi[[v]])
immun$pcInd81 <- gi$pcInd81
mm <- mlmRev::Mmmec
mmmec <- data.frame(nation = as.character(mm$nation), region = as.integer(as.character(mm$region)),
                    county = as.integer(as.character(mm$county)), deaths = mm$deaths, expected = mm$expected,
                    log_expected = log(mm$expected), uvb = mm$uvb)
gt <- lme4::grouseticks
ticks <- data.frame(INDEX = as.integer(as.character(gt$INDEX)), TICKS = gt$TICKS,
                    BROOD = as.integer(as.character(gt$BROOD)), HEIGHT = gt$HEIGHT,
                    YEAR = as.integer(as.character(gt$YEAR)), LOCATION = as.integer(as.character(gt$LOCATION)),
                    cHEIGHT = gt$cHEIGHT)
data <- list(cbpp = cbpp, contraception = contra, guimmun = immun, mmmec = mmmec, grouseticks = ticks)
for (d in names(data)) write.csv(data[[d]], sprintf("tests/data/glmm_%s.csv", d), row.names = FALSE)

# R's own factors for the fits: categorical columns as factors whose levels sort as hiercompare sorts them
rdata <- data
rdata$cbpp$period <- factor(rdata$cbpp$period)
rdata$contraception$livch <- factor(rdata$contraception$livch)
for (v in c("kid2p", "mom25p", "ord", "ethn", "momEd", "husEd", "momWork", "rural"))
  rdata$guimmun[[v]] <- factor(rdata$guimmun[[v]])
rdata$grouseticks$YEAR <- factor(rdata$grouseticks$YEAR)
for (d in names(rdata)) for (g in c("herd", "district", "comm", "mom", "nation", "region", "LOCATION", "BROOD"))
  if (!is.null(rdata[[d]][[g]])) rdata[[d]][[g]] <- factor(rdata[[d]][[g]])

# case: name, data set, family, nAGQ, R formula, hiercompare formula
cases <- list(
  list("cbpp_laplace", "cbpp", "binomial", 1L, "cbind(incidence, size - incidence) ~ period + (1 | herd)",
       "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"),
  list("cbpp_agq25", "cbpp", "binomial", 25L, "cbind(incidence, size - incidence) ~ period + (1 | herd)",
       "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"),
  list("contraception_slope", "contraception", "binomial", 1L, "use ~ age + urban + (1 + urban | district)",
       "use ~ age + urban + (1 + urban | district)"),
  list("contraception_agq9", "contraception", "binomial", 9L, "use ~ age + urban + livch + (1 | district)",
       "use ~ age + urban + livch + (1 | district)"),
  list("guimmun_3level", "guimmun", "binomial", 1L,
       "immun ~ kid2p + mom25p + ord + ethn + momEd + husEd + momWork + rural + pcInd81 + (1 | comm) + (1 | comm:mom)",
       "immun ~ kid2p + mom25p + ord + ethn + momEd + husEd + momWork + rural + pcInd81 + (1 | comm) + (1 | comm:mom)"),
  list("mmmec_poisson", "mmmec", "poisson", 1L,
       "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)",
       "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"),
  list("mmmec_negbin", "mmmec", "negbinomial", 1L,
       "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)",
       "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"),
  list("grouseticks_poisson", "grouseticks", "poisson", 1L,
       "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | LOCATION:BROOD)",
       "TICKS ~ C(YEAR) + cHEIGHT + (1 | LOCATION) + (1 | LOCATION:BROOD)"),
  list("grouseticks_negbin", "grouseticks", "negbinomial", 1L,
       "TICKS ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | LOCATION:BROOD)",
       "TICKS ~ C(YEAR) + cHEIGHT + (1 | LOCATION) + (1 | LOCATION:BROOD)"))

controls <- list(
  default = glmerControl(),
  bobyqa = glmerControl(optimizer = "bobyqa"),
  Nelder_Mead = glmerControl(optimizer = "Nelder_Mead"),
  nloptwrap = glmerControl(optimizer = "nloptwrap"),
  nlminbwrap = glmerControl(optimizer = "nlminbwrap"),
  bobyqa_tight = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5)),
  default_tolPwrss = glmerControl(tolPwrss = 1e-12),
  bobyqa_tight_tolPwrss = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5),
                                       tolPwrss = 1e-12))

rows <- list()
for (cs in cases) {
  name <- cs[[1]]; d <- rdata[[cs[[2]]]]; family <- cs[[3]]; nagq <- cs[[4]]; f <- as.formula(cs[[5]])
  fits <- lapply(controls, function(ctrl) tryCatch(suppressWarnings(suppressMessages(
    if (family == "negbinomial") glmer.nb(f, data = d, control = ctrl, nAGQ = nagq)
    else glmer(f, data = d, family = family, control = ctrl, nAGQ = nagq))), error = function(e) NULL))
  ll <- sapply(fits, function(m) if (is.null(m)) -Inf else as.numeric(logLik(m)))
  best <- which.max(ll)
  m <- fits[[best]]
  add <- function(kind, nm, value) rows[[length(rows) + 1L]] <<- data.frame(
    case = name, dataset = cs[[2]], family = family, nagq = nagq, formula = cs[[6]], kind = kind, name = nm,
    value = sprintf("%.17g", value))
  add("loglik", names(controls)[best], as.numeric(logLik(m)))
  for (o in names(controls)) add("loglik_by_optimizer", o, ll[[o]])
  fe <- fixef(m); for (i in seq_along(fe)) add("fixef", names(fe)[i], fe[[i]])
  se <- sqrt(diag(as.matrix(vcov(m)))); for (i in seq_along(se)) add("fixef_se", names(fe)[i], se[[i]])
  vc <- as.data.frame(VarCorr(m))
  for (i in seq_len(nrow(vc))) {
    term <- if (is.na(vc$var2[i])) paste0("sd__", vc$var1[i]) else paste0("cor__", vc$var1[i], ".", vc$var2[i])
    add("ran_pars", paste0(vc$grp[i], "|", term), vc$sdcor[i])
  }
  if (family == "negbinomial") add("nb_theta", "theta", getME(m, "glmer.nb.theta"))
  if (name != "guimmun_3level") {  # 1,756 modes there; the other cases keep every conditional mode and SD
    re <- as.data.frame(ranef(m, condVar = TRUE))
    for (i in seq_len(nrow(re))) {
      key <- paste0(re$grpvar[i], "|", re$term[i], "|", re$grp[i])
      add("condval", key, re$condval[i])
      add("condsd", key, re$condsd[i])
    }
  }
}
write.csv(do.call(rbind, rows), "tests/data/glmm_reference.csv", row.names = FALSE)
