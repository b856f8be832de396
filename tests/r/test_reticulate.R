# Run by tests/test_r_users.py (so by `make test`): the R package hiercompare (R CMD INSTALL . into a temporary
# library) calling the Python package through reticulate, checked
# against lme4 fitted in the same R session.
library(testthat)
library(hiercompare)  # installed by the test (R CMD INSTALL .), Python chosen by HIERCOMPARE_VENV

test_that("hiercompare's mixedlm through reticulate agrees with lme4 in the same session", {
  sim <- hc_simulate(seed = 123)
  expect_equal(dim(sim$data), c(5000L, 6L))
  f <- "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
  td <- hc_tidy(hc_fit(sim$data, f, backend = "mixedlm"))
  expect_true(all(c("effect", "group", "level", "term", "estimate", "std.error", "conf.low", "conf.high")
                  %in% names(td)))
  m <- lme4::lmer(stats::as.formula(f), data = sim$data)
  fx <- td[td$effect == "fixed", ]
  expect_equal(fx$term, names(lme4::fixef(m)))
  expect_equal(fx$estimate, unname(lme4::fixef(m)), tolerance = 1e-4)
  vc <- as.data.frame(lme4::VarCorr(m))
  sd_market <- vc$sdcor[vc$grp == "market" & vc$var1 == "(Intercept)" & is.na(vc$var2)]
  sd_sub <- vc$sdcor[vc$grp == "market:submarket"]
  got <- td[td$effect == "ran_pars", ]
  expect_equal(got$estimate[got$group == "market" & got$term == "sd__(Intercept)"], sd_market, tolerance = 1e-2)
  expect_equal(got$estimate[got$group == "market:submarket"], sd_sub, tolerance = 1e-2)
  re <- lme4::ranef(m)$market
  mine <- td[td$effect == "ran_vals" & td$group == "market" & td$term == "(Intercept)", ]
  expect_equal(mine$estimate[match(rownames(re), mine$level)], re[["(Intercept)"]], tolerance = 1e-2)
})

test_that("compare and study from R return data.frames", {
  sim <- hc_simulate(seed = 5)
  f <- "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
  a <- hc_fit(sim$data, f, backend = "mixedlm")
  b <- hc_fit(sim$data, f, backend = "native")
  cmp <- hc_compare(a, b)
  expect_true(is.data.frame(cmp))
  fx <- cmp[cmp$param_class == "fixed", ]
  expect_equal(nrow(fx), 3L)
  expect_true(all(fx$verdict == "agree"))
  cfg <- tempfile(fileext = ".toml")
  writeLines(c("[study]", 'name = "r_tiny"', "replications = 2", "seed = 7", 'backends = ["ols", "native"]',
               "[[scenario]]", 'name = "small"', "n_obs = 20"), cfg)
  res <- hc_study(cfg, file.path(tempdir(), "r_tiny_study"), workers = 1L)
  expect_true(is.data.frame(res))
  expect_equal(sort(unique(res$backend)), c("native", "ols"))
  expect_equal(sort(unique(res$replication)), c(0, 1))
  html <- hc_report(file.path(tempdir(), "r_tiny_study"))
  expect_true(file.exists(html))
  expect_true(any(grepl("Provenance", readLines(html, warn = FALSE))))
})

test_that("R backends say why they are unavailable inside R", {
  sim <- hc_simulate(seed = 1)
  expect_error(hc_fit(sim$data, "y ~ x1 + (1 | market)", backend = "lme4"), "inside R through reticulate")
})

test_that("hc_compare_data runs every asked backend (R ones too) and returns the report's tables", {
  out <- file.path(tempdir(), "r_compare_pastes")
  res <- hc_compare_data(lme4::Pastes, c("strength ~ 1 + (1 | batch) + (1 | batch:cask)", "strength ~ 1 + (1 | batch:cask)"),
                         backends = c("native", "lme4", "ols"), out_dir = out, cv = "none")
  expect_true(file.exists(attr(res, "report")))
  fits <- res$fits
  expect_equal(nrow(fits), 6L)
  expect_true(all(fits$status == "ok"))  # lme4 too: the command runs in its own Python process
  # the numbers are lme4's own, fitted in this session
  m <- lme4::lmer(strength ~ 1 + (1 | batch) + (1 | batch:cask), data = lme4::Pastes)
  ll <- fits$loglik[fits$backend == "lme4" & grepl("(1 | batch) +", fits$formula, fixed = TRUE)]
  expect_equal(ll, as.numeric(logLik(m)), tolerance = 1e-8)
  expect_equal(nrow(res$lrt), 1L)
  expect_true(grepl("chi-bar", res$lrt$note))
  expect_error(hc_compare_data(lme4::Pastes, 1, out_dir = out), "formulas must be")
})
