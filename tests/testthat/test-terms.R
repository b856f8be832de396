# hc_tidy names fixed effects as R does; the reference is lme4's own fixef() on the same data.
test_that("hc_tidy uses R's term names, those of lme4::fixef, for categorical terms", {
  skip_without_python()
  skip_if_not_installed("lme4")
  sim <- hc_simulate(seed = 11)
  d <- sim$data
  set.seed(3)
  d$sex <- sample(c("F", "M"), nrow(d), replace = TRUE)           # a character column
  d$livch <- sample(c("0", "1", "2", "3+"), nrow(d), replace = TRUE)  # levels that are not syntactic names
  d$region <- factor(sample(c("north", "south", "west"), nrow(d), replace = TRUE))  # a factor
  f <- "y ~ x1 + x2 + sex + livch + region + x1:x2 + (1 + x1 | market)"
  fit <- hc_fit(d, f, backend = "mixedlm")
  mine <- hc_tidy(fit)
  fx <- mine[mine$effect == "fixed", ]
  ref <- lme4::fixef(lme4::lmer(stats::as.formula(f), data = d, REML = TRUE))
  expect_equal(fx$term, names(ref))
  # the names label the same coefficients
  expect_equal(fx$estimate, unname(ref), tolerance = 1e-4)
  # the Python package's own names are unchanged
  py <- hc_tidy(fit, names = "python")
  expect_true(all(c("sex[T.M]", "livch[T.3+]", "region[T.west]") %in% py$term))
  expect_equal(py$estimate, mine$estimate)
  expect_equal(mine$term[mine$effect != "fixed"], py$term[py$effect != "fixed"])
})

test_that("without an intercept every level is a term, as in R", {
  skip_without_python()
  skip_if_not_installed("lme4")
  sim <- hc_simulate(seed = 12)
  d <- sim$data
  d$sex <- rep(c("F", "M"), length.out = nrow(d))
  f <- "y ~ 0 + sex + x1 + (1 | market)"
  fx <- hc_tidy(hc_fit(d, f, backend = "native"))
  ref <- lme4::fixef(lme4::lmer(stats::as.formula(f), data = d))
  expect_equal(fx$term[fx$effect == "fixed"], names(ref))
  # an R formula object is the same model as its text
  expect_equal(hc_tidy(hc_fit(d, y ~ 0 + sex + x1 + (1 | market), backend = "native")), fx)
})
