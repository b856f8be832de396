# hiercompare from R, through reticulate: small functions that return data.frames in broom.mixed's layout.
#   source(system.file(...) or this file); Sys.setenv(HIERCOMPARE_VENV = "/path/to/hiercompare/.venv")
#   sim <- hc_simulate(seed = 123); fit <- hc_fit(sim$data, "y ~ x1 + (1 | market)", backend = "mixedlm")
#   hc_tidy(fit)
# The R backends (lme4, r_lm) are not available from inside R (rpy2 cannot start a second R); call lme4
# directly and compare with hc_tidy() output.

hc_module <- function(venv = Sys.getenv("HIERCOMPARE_VENV", "")) {
  if (nzchar(venv)) reticulate::use_virtualenv(venv, required = TRUE)
  hc <- tryCatch(reticulate::import("hiercompare"), error = function(e) {
    stop("hiercompare cannot be imported by reticulate (", conditionMessage(e), "). Run `make install` in the ",
         "hiercompare checkout and set HIERCOMPARE_VENV to its .venv folder.", call. = FALSE)
  })
  hc
}

# a pandas DataFrame -> data.frame (column by column, so it works whatever reticulate's pandas support)
hc_df <- function(x) {
  cols <- unlist(x$columns$tolist())
  out <- lapply(cols, function(cn) x$`__getitem__`(cn)$tolist())
  out <- lapply(out, function(v) if (is.list(v)) unlist(lapply(v, function(e) if (is.null(e)) NA else e)) else v)
  names(out) <- cols
  as.data.frame(out, stringsAsFactors = FALSE, check.names = FALSE)
}

hc_simulate <- function(seed = 123L) {
  hc <- hc_module()
  res <- hc$simulate(seed = as.integer(seed))
  list(data = hc_df(res[[1]]), truth = hc_df(res[[2]]$tidy()))
}

hc_fit <- function(data, formula, backend = "mixedlm", ...) {
  hc <- hc_module()
  hc$fit(reticulate::r_to_py(data), formula, backend = backend, ...)
}

hc_tidy <- function(fit) {
  d <- hc_df(fit$tidy())
  names(d) <- sub("std_error", "std.error", sub("conf_low", "conf.low", sub("conf_high", "conf.high", names(d))))
  d
}

# compare several fits: the agreement table (one row per pair, parameter and quantity) as a data.frame
hc_compare <- function(...) {
  hc <- hc_module()
  hc_df(hc$compare(list(...)))
}

# a simulation study from a TOML config; returns the results table (one row per scenario, replication,
# backend and parameter) and writes out_dir (results.parquet, manifest.json, performance.csv)
hc_study <- function(config, out_dir, workers = 1L) {
  hc <- hc_module()
  st <- hc$Study$from_toml(config)
  res <- st$run(out_dir, workers = as.integer(workers))
  hc_df(res)
}

# render the HTML report of a finished study folder; returns the report's path
hc_report <- function(out_dir) {
  hc <- hc_module()
  rep <- reticulate::import("hiercompare.report.study")
  as.character(rep$render_study(out_dir))
}
