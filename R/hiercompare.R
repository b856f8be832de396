# hiercompare from R, through reticulate: small functions that return data.frames in broom.mixed's layout.
# The Python side does the work; see hc_module() for which Python runs.

#' A pandas DataFrame as a data.frame
#'
#' Converts column by column (so it works whatever reticulate's pandas conversion does); Python's `None`
#' and a missing number (`NaN`, e.g. the standard error that lme4 does not give for a variance parameter)
#' become `NA`, as in broom.mixed.
#'
#' @param x A pandas DataFrame (a reticulate Python object), e.g. `fit$tidy()`.
#' @return A data.frame with the same column names; strings stay character vectors.
#' @examples
#' \dontrun{
#' hc <- hc_module()
#' hc_df(hc$simulate(seed = 1L)[[1]])
#' }
#' @export
hc_df <- function(x) {
  if (!inherits(x, "python.builtin.object")) {
    stop("hc_df() needs a pandas DataFrame (a Python object); got an object of class ", class(x)[1L], call. = FALSE)
  }
  cols <- unlist(x$columns$tolist())
  out <- lapply(cols, function(cn) x$`__getitem__`(cn)$tolist())
  out <- lapply(out, function(v) if (is.list(v)) unlist(lapply(v, function(e) if (is.null(e)) NA else e)) else v)
  out <- lapply(out, function(v) if (is.double(v)) replace(v, is.nan(v), NA_real_) else v)
  names(out) <- cols
  as.data.frame(out, stringsAsFactors = FALSE, check.names = FALSE)
}

#' Simulate the running example: a national -> market -> submarket tree with known truth
#'
#' @param seed Integer seed of the simulation.
#' @return A list: `data` (a data.frame: `y`, `x1`, `x2`, `market`, `submarket`, ...) and `truth` (the
#'   generating values in the tidy layout of [hc_tidy()]).
#' @examples
#' \dontrun{
#' sim <- hc_simulate(seed = 123)
#' str(sim$data)
#' }
#' @export
hc_simulate <- function(seed = 123L) {
  hc <- hc_module()
  res <- hc$simulate(seed = as.integer(seed))
  list(data = hc_df(res[[1]]), truth = hc_df(res[[2]]$tidy()))
}

#' Fit an lme4-style hierarchical model on one backend
#'
#' @param data A data.frame. Character columns and factors used as fixed effects are categorical
#'   (treatment coding; the reference is the first level in sorted order).
#' @param formula The model as one string in lme4 syntax, e.g.
#'   `"y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"`; the Python side checks it against a strict
#'   grammar.
#' @param backend A backend name: `"mixedlm"`, `"native"`, `"ols"`, `"pymc"`, ... (`hc_module()$backends()`
#'   lists them). The R backends (`"lme4"`, `"r_lm"`, `"brms"`) are unavailable from R and say so.
#' @param weights Gaussian prior weights with the meaning of `lme4::lmer(weights = )` and `stats::lm(weights = )`:
#'   row i's residual variance is `sigma^2 / weights[i]`, so the fit (estimates, log-likelihood, REML criterion)
#'   is lmer's with the same weights. Either the name of a numeric column of `data` (one string, e.g.
#'   `"n_pupils"`) or a numeric vector with one positive value per row of `data`. `NULL` (the default): no
#'   weights. A backend without the feature `"weights"` in `hc_module()$backends()` refuses them with an
#'   error (from R: native and ols take them; lme4 and r_lm take them from Python); so does a non-Gaussian
#'   family (for successes out of n trials write `cbind(successes, n - successes)`).
#' @param ... Options passed to the backend (e.g. `method = "ML"`).
#' @return The Python Fit object; read it with [hc_tidy()].
#' @examples
#' \dontrun{
#' sim <- hc_simulate(seed = 123)
#' fit <- hc_fit(sim$data, "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)", backend = "mixedlm")
#' hc_tidy(fit)
#' # prior weights, as lme4::lmer(y ~ x2 + (1 | market), data = d, weights = w)
#' d <- sim$data
#' d$w <- rep(c(0.5, 1, 2), length.out = nrow(d))
#' hc_tidy(hc_fit(d, "y ~ x2 + (1 | market)", backend = "native", weights = "w"))
#' }
#' @export
hc_fit <- function(data, formula, backend = "mixedlm", weights = NULL, ...) {
  if (!is.data.frame(data)) stop("data must be a data.frame; got ", class(data)[1L], call. = FALSE)
  if (inherits(formula, "formula")) formula <- paste(deparse(formula, width.cutoff = 500L), collapse = " ")
  if (!is.character(formula) || length(formula) != 1L || is.na(formula)) {
    stop("formula must be one string (or an R formula), e.g. \"y ~ x1 + (1 | market)\"", call. = FALSE)
  }
  if (!is.character(backend) || length(backend) != 1L || is.na(backend)) {
    stop("backend must be one backend name, e.g. \"mixedlm\"", call. = FALSE)
  }
  weights <- hc_weights(weights, data)
  hc <- hc_module()
  if (is.null(weights)) {
    return(hc$fit(reticulate::r_to_py(data), formula, backend = backend, ...))
  }
  hc$fit(reticulate::r_to_py(data), formula, backend = backend, weights = weights, ...)
}

# hc_fit()'s weights as the Python side takes them: NULL, a column name (checked here), or a Python list of one
# float per row (a list, so that a one-row data set's weight stays a sequence; not a numpy array, which
# reticulate 1.28 cannot build against NumPy 2).
hc_weights <- function(weights, data) {
  if (is.null(weights)) {
    return(NULL)
  }
  if (is.character(weights)) {
    if (length(weights) != 1L || is.na(weights)) {
      stop("weights must be one column name or a numeric vector with one value per row", call. = FALSE)
    }
    if (!weights %in% names(data)) {
      stop("weights names a column that data does not have: '", weights, "'", call. = FALSE)
    }
    if (!is.numeric(data[[weights]])) {
      stop("the weights column '", weights, "' must be numeric; it is ", class(data[[weights]])[1L], call. = FALSE)
    }
    return(weights)
  }
  if (!is.numeric(weights) || is.matrix(weights)) {
    stop("weights must be one column name or a numeric vector; got ", class(weights)[1L], call. = FALSE)
  }
  if (length(weights) != nrow(data)) {
    stop("weights has ", length(weights), " values; data has ", nrow(data), " rows (one weight per row)",
         call. = FALSE)
  }
  if (anyNA(weights)) stop("weights has missing values; drop those rows from data first", call. = FALSE)
  reticulate::r_to_py(as.list(as.numeric(weights)))
}

#' A fit as a tidy data.frame, in broom.mixed's layout and with R's term names
#'
#' One row per fixed effect (`effect == "fixed"`), variance parameter (`"ran_pars"`: `sd__(Intercept)`,
#' `cor__(Intercept).x1`, the residual as group `Residual`, term `sd__Observation`) and group deviation
#' (`"ran_vals"`), with broom.mixed's columns `effect`, `group`, `level`, `term`, `estimate`, `std.error`,
#' `conf.low`, `conf.high`, `df`, `p.value`, plus `backend`. For the fixed effects of native, lme4 and mixedlm
#' fits `df` is Satterthwaite's (lmerTest's, the default; `hc_fit(..., df = "kenward-roger")` for pbkrtest's,
#' `df = "z"` for Wald z, where `df` is `Inf`) and the interval and `p.value` are t-based, as lmerTest's
#' `summary()` reports them; `df` and `p.value` are `NA` where a backend states no df, and on the other rows.
#' `interval` says what a row's `std.error` and interval are conditional on: empty for the backend's own inference,
#' `"conditional_on_f"` for lightgbm's and torch's default intervals, which treat their learned f(x) as known (too
#' narrow), `"cluster_bootstrap"` for their `intervals = "bootstrap"` option.
#'
#' With `names = "r"` (the default) fixed-effect terms are named as lme4 and broom.mixed name them: `sexM`
#' and `livch3+` for the treatment dummies that the Python side calls `sex[T.M]` and `livch[T.3+]` (a
#' `C(x)` term reads as for a factor column `x`); numeric terms and interactions (`x1:x2`) read the same.
#' The names come from the fit's design (Python's `Fit.tidy(names = "r")`), not from the text.
#'
#' @param fit A fit returned by [hc_fit()].
#' @param names `"r"` (R's term names) or `"python"` (the Python package's own, e.g. `sex[T.M]`).
#' @return A data.frame.
#' @examples
#' \dontrun{
#' sim <- hc_simulate(seed = 1)
#' sim$data$sex <- rep(c("F", "M"), length.out = nrow(sim$data))
#' hc_tidy(hc_fit(sim$data, "y ~ x1 + sex + (1 | market)"))  # terms (Intercept), x1, sexM
#' }
#' @export
hc_tidy <- function(fit, names = c("r", "python")) {
  names <- match.arg(names)
  if (!inherits(fit, "python.builtin.object") || !reticulate::py_has_attr(fit, "tidy")) {
    stop("hc_tidy() needs a fit returned by hc_fit(); got an object of class ", class(fit)[1L], call. = FALSE)
  }
  d <- hc_df(fit$tidy(names = names))
  rename <- c(std_error = "std.error", conf_low = "conf.low", conf_high = "conf.high", p_value = "p.value")
  hit <- base::names(d) %in% base::names(rename)
  base::names(d)[hit] <- rename[base::names(d)[hit]]
  d
}

#' Compare several fits: the agreement table
#'
#' @param ... Fits returned by [hc_fit()] (two or more).
#' @return A data.frame with one row per pair of fits, parameter and quantity: the difference, the
#'   tolerance of the parameter's class and a verdict.
#' @examples
#' \dontrun{
#' sim <- hc_simulate(seed = 5)
#' f <- "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
#' hc_compare(hc_fit(sim$data, f, backend = "mixedlm"), hc_fit(sim$data, f, backend = "native"))
#' }
#' @export
hc_compare <- function(...) {
  hc <- hc_module()
  hc_df(hc$compare(list(...)))
}

#' Run a simulation study from a TOML config
#'
#' @param config Path of the study's TOML file (see the README's "Simulation studies").
#' @param out_dir Folder the study writes: `results.parquet`, `manifest.json`, `performance.csv`; running the
#'   same call again resumes an interrupted study.
#' @param workers Number of local worker processes.
#' @return The results table (one row per scenario, replication, backend and parameter) as a data.frame.
#' @examples
#' \dontrun{
#' res <- hc_study("validation/seed_small.toml", file.path(tempdir(), "seed_small"))
#' }
#' @export
hc_study <- function(config, out_dir, workers = 1L) {
  if (!is.character(config) || length(config) != 1L || !file.exists(config)) {
    stop("config must be the path of an existing TOML file; got ", deparse(config)[1L], call. = FALSE)
  }
  hc <- hc_module()
  st <- hc$Study$from_toml(config)
  res <- st$run(out_dir, workers = as.integer(workers))
  hc_df(res)
}

#' Render the HTML report of a finished study
#'
#' @param out_dir The study's folder (the `out_dir` of [hc_study()]).
#' @return The path of `report.html` in `out_dir` (tables beside it in `report_tables/`).
#' @examples
#' \dontrun{
#' browseURL(hc_report(file.path(tempdir(), "seed_small")))
#' }
#' @export
hc_report <- function(out_dir) {
  if (!is.character(out_dir) || length(out_dir) != 1L || !dir.exists(out_dir)) {
    stop("out_dir must be the folder of a finished study; got ", deparse(out_dir)[1L], call. = FALSE)
  }
  hc_module()
  rep <- reticulate::import("hiercompare.report.study")
  as.character(rep$render_study(out_dir))
}

#' Every backend on your own data: fits, agreement and its diagnosis, model comparison, cross-validation
#'
#' Runs `hiercompare compare` (the same command as from a shell) in a separate Python process, so that its R
#' backends (lme4, lm, brms, which Python reaches through rpy2) run too: they cannot run inside this R session.
#' The outputs are those of the command: `report.html`, `tables/*.csv` and `results.json` in `out_dir`; running
#' the same call again into the same folder resumes an interrupted run.
#'
#' @param data A data.frame (written to a CSV in `out_dir`; factors as their labels) or the path of a CSV or
#'   Parquet file.
#' @param formulas One or more lme4-style formulas as strings; two or more are also compared with each other
#'   (likelihood-ratio tests, AIC/BIC, cross-validation).
#' @param backends Backend names, or `NULL` for every registered backend (one that cannot run says why).
#' @param out_dir The output folder.
#' @param cv Fold kinds of the grouped cross-validation: `"top"` (leave top-level groups out), `"leaf"`,
#'   `"rows"`, a grouping factor, or `"none"`.
#' @param cv_folds Number of folds.
#' @param bootstrap Parametric bootstrap replications on this design (0: none), for every family: the responses
#'   are drawn from native's fit with the data's offsets and binomial trials.
#' @param method `"REML"` or `"ML"`.
#' @param family `NULL` (Gaussian), `"binomial"` (a 0/1 response, or `cbind(successes, failures)`),
#'   `"poisson"` or `"negbinomial"`.
#' @param na_action `"error"` or `"drop"` (rows missing a used value, listed in the report).
#' @param seed Integer seed.
#' @return A named list of data.frames, one per table of the report (`fits`, `diagnosis`,
#'   `likelihood_check`, `information_criteria`, `lrt`, `cv_summary`, ...), with attribute `report` (the path of
#'   `report.html`).
#' @examples
#' \dontrun{
#' res <- hc_compare_data(mlmRev::Exam, c("normexam ~ standLRT + (1 | school)",
#'                                        "normexam ~ standLRT + (1 + standLRT | school)"),
#'                        backends = c("native", "lme4", "mixedlm", "ols"), out_dir = tempfile())
#' res$diagnosis
#' }
#' @export
hc_compare_data <- function(data, formulas, backends = NULL, out_dir, cv = "top", cv_folds = 5L, bootstrap = 0L,
                            method = "REML", family = NULL, na_action = "error", seed = 0L) {
  if (!is.character(formulas) || length(formulas) < 1L || anyNA(formulas)) {
    stop("formulas must be one or more strings such as \"y ~ x + (1 | g)\"", call. = FALSE)
  }
  if (!is.character(out_dir) || length(out_dir) != 1L) stop("out_dir must be one folder path", call. = FALSE)
  if (!is.null(backends) && (!is.character(backends) || anyNA(backends))) {
    stop("backends must be NULL or a character vector of backend names", call. = FALSE)
  }
  method <- match.arg(toupper(method), c("REML", "ML"))
  na_action <- match.arg(na_action, c("error", "drop"))
  dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)
  if (is.data.frame(data)) {
    path <- file.path(out_dir, "data.csv")
    utils::write.csv(data, path, row.names = FALSE)
  } else if (is.character(data) && length(data) == 1L && file.exists(data)) {
    path <- normalizePath(data)
  } else {
    stop("data must be a data.frame or the path of an existing CSV or Parquet file", call. = FALSE)
  }
  hc_module()
  python <- reticulate::py_config()$python
  args <- c("-m", "hiercompare.cli", "compare", shQuote(path), as.vector(rbind("--formula", shQuote(formulas))),
            "--out", shQuote(out_dir), "--cv", shQuote(paste(cv, collapse = ",")),
            "--cv-folds", as.integer(cv_folds), "--bootstrap", as.integer(bootstrap), "--method", method,
            "--na-action", na_action, "--seed", as.integer(seed))
  if (!is.null(backends)) args <- c(args, "--backends", shQuote(paste(backends, collapse = ",")))
  if (!is.null(family)) args <- c(args, "--family", shQuote(family))
  status <- system2(python, args)
  if (!identical(as.integer(status), 0L)) {
    stop("hiercompare compare failed (exit status ", status, "); its message is above", call. = FALSE)
  }
  files <- list.files(file.path(out_dir, "tables"), pattern = "[.]csv$", full.names = TRUE)
  out <- lapply(files, function(f) {
    if (file.size(f) <= 1L) data.frame() else utils::read.csv(f, stringsAsFactors = FALSE, check.names = FALSE)
  })
  names(out) <- sub("[.]csv$", "", basename(files))
  attr(out, "report") <- file.path(out_dir, "report.html")
  out
}
