test_that("library(hiercompare) exports the hc_* functions, each documented", {
  exports <- sort(getNamespaceExports("hiercompare"))
  expect_equal(exports, sort(c("hc_module", "hc_df", "hc_simulate", "hc_fit", "hc_tidy", "hc_compare", "hc_compare_data",
                               "hc_study", "hc_report")))
  for (f in exports) expect_true(is.function(get(f, envir = asNamespace("hiercompare"))), label = f)
  topics <- names(readRDS(system.file("help", "aliases.rds", package = "hiercompare")))
  expect_true(all(exports %in% topics), label = paste(setdiff(exports, topics), collapse = ", "))
})

test_that("loading the package does not start Python", {
  # a fresh R process: in this one a test may already have started Python
  lib <- dirname(system.file(package = "hiercompare"))
  code <- sprintf("library(hiercompare, lib.loc = %s); cat(reticulate::py_available(initialize = FALSE))",
                  deparse(lib))
  out <- system2(file.path(R.home("bin"), "Rscript"), c("-e", shQuote(code)), stdout = TRUE, stderr = TRUE)
  expect_equal(tail(out, 1), "FALSE")
})

test_that("a venv without Python is an error that says what to set", {
  bad <- file.path(tempdir(), "no-such-venv")
  expect_error(hc_module(venv = bad), "no bin/python.*HIERCOMPARE_VENV|HIERCOMPARE_VENV.*no bin/python")
  expect_error(hc_module(venv = bad), "make install")
  expect_error(hc_module(venv = c("a", "b")), "one path")
})

test_that("the arguments are checked before Python is asked", {
  expect_error(hc_fit(list(y = 1), "y ~ 1"), "data must be a data.frame")
  expect_error(hc_fit(data.frame(y = 1), c("y ~ 1", "y ~ x")), "formula must be one string")
  expect_error(hc_tidy(data.frame()), "needs a fit returned by hc_fit")
  expect_error(hc_tidy(NULL, names = "stata"), "should be one of")
  expect_error(hc_study(file.path(tempdir(), "missing.toml"), tempdir()), "existing TOML file")
})
