# hc_fit(weights = ) against lme4::lmer(weights = ) on lme4's sleepstudy (180 rows, 18 subjects) with prior
# weights that vary within and between subjects.
# Tolerances (relative, testthat's expect_equal): fixed effects and their SEs 1e-6, the SDs 1e-5, the REML
# log-likelihood 1e-8: native maximises the same REML criterion exactly (issue 12's weighted-lmer check in
# tests/test_counts.py agrees to 1e-5 on the SDs), so what is left is the two optimizers' stopping points.
sleep_weighted <- function() {
  d <- lme4::sleepstudy
  d$Subject <- as.character(d$Subject)
  d$w <- rep(c(0.5, 1, 2, 4), length.out = nrow(d))
  d
}

test_that("hc_fit(weights = a column) is lmer(weights = ) with REML", {
  skip_without_python()
  skip_if_not_installed("lme4")
  d <- sleep_weighted()
  f <- "Reaction ~ Days + (1 + Days | Subject)"
  fit <- hc_fit(d, f, backend = "native", weights = "w")
  mine <- hc_tidy(fit)
  ref <- lme4::lmer(stats::as.formula(f), data = d, weights = w, REML = TRUE,
                    control = lme4::lmerControl(optimizer = "bobyqa"))
  fx <- mine[mine$effect == "fixed", ]
  expect_equal(fx$term, names(lme4::fixef(ref)))
  expect_equal(fx$estimate, unname(lme4::fixef(ref)), tolerance = 1e-6)
  expect_equal(fx$std.error, unname(sqrt(diag(as.matrix(stats::vcov(ref))))), tolerance = 1e-6)
  vc <- as.data.frame(lme4::VarCorr(ref))
  rp <- mine[mine$effect == "ran_pars", ]
  sd_of <- function(grp, term) rp$estimate[rp$group == grp & rp$term == term]
  expect_equal(sd_of("Subject", "sd__(Intercept)"),
               vc$sdcor[vc$grp == "Subject" & vc$var1 == "(Intercept)" & is.na(vc$var2)], tolerance = 1e-5)
  expect_equal(sd_of("Subject", "sd__Days"), vc$sdcor[vc$grp == "Subject" & vc$var1 == "Days" & is.na(vc$var2)],
               tolerance = 1e-5)
  expect_equal(sd_of("Subject", "cor__(Intercept).Days"), vc$sdcor[vc$grp == "Subject" & !is.na(vc$var2)],
               tolerance = 1e-4)
  expect_equal(sd_of("Residual", "sd__Observation"), stats::sigma(ref), tolerance = 1e-5)
  expect_equal(as.numeric(fit$loglik), as.numeric(stats::logLik(ref)), tolerance = 1e-8)
  # the weights matter: the unweighted fit is another one
  plain <- hc_tidy(hc_fit(d, f, backend = "native"))
  expect_gt(abs(plain$estimate[2] - fx$estimate[2]), 1e-3)
})

test_that("weights as a vector equal weights as a column; bad weights are refused before Python", {
  d <- sleep_weighted()
  expect_error(hc_fit(d, "Reaction ~ Days + (1 | Subject)", weights = "nope"), "does not have: 'nope'")
  expect_error(hc_fit(d, "Reaction ~ Days + (1 | Subject)", weights = d$w[-1]), "179 values; data has 180 rows")
  expect_error(hc_fit(d, "Reaction ~ Days + (1 | Subject)", weights = c("w", "w")), "one column name")
  expect_error(hc_fit(d, "Reaction ~ Days + (1 | Subject)", weights = "Subject"), "must be numeric")
  expect_error(hc_fit(d, "Reaction ~ Days + (1 | Subject)", weights = replace(d$w, 3, NA)), "missing values")
  skip_without_python()
  f <- "Reaction ~ Days + (1 | Subject)"
  a <- hc_tidy(hc_fit(d, f, backend = "native", weights = "w"))
  b <- hc_tidy(hc_fit(d, f, backend = "native", weights = d$w))
  expect_equal(a$estimate, b$estimate, tolerance = 1e-12)
  # a backend without prior weights, and a non-Gaussian family, refuse them (the Python side's errors)
  expect_error(hc_fit(d, f, backend = "mixedlm", weights = "w"), "weights")
  d$y01 <- as.numeric(d$Reaction > stats::median(d$Reaction))
  expect_error(hc_fit(d, "y01 ~ Days + (1 | Subject)", backend = "native", family = "binomial", weights = "w"),
               "Gaussian prior weights")
})
