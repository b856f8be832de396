# Finding and importing the Python package: once per session, at the first call of a hc_* function.

.hc_state <- new.env(parent = emptyenv())

#' The hiercompare Python module
#'
#' Imports the Python package hiercompare through reticulate at the first call and returns the (cached)
#' module; every `hc_*` function calls it.
#'
#' Which Python runs: with `venv` (by default the environment variable `HIERCOMPARE_VENV`) set, exactly the
#' interpreter of that virtual environment, chosen before reticulate's own discovery runs (through
#' `RETICULATE_PYTHON`, set only while Python starts; `venv` takes precedence over a `RETICULATE_PYTHON`
#' of your own). Without it, reticulate's discovery chooses, except that a `pyproject.toml` without a
#' `[tool.poetry]` table (hiercompare's own, when R runs in a checkout) is not taken for a Poetry project:
#' reticulate 1.28 reads any `pyproject.toml` it finds from the working directory as one and warns that the
#' `poetry` command is missing.
#'
#' Python starts once per R session: once it runs, `venv` must name the environment it runs from.
#'
#' @param venv Path of a virtual environment that has the hiercompare Python package, e.g. the `.venv`
#'   folder of a checkout after `make install`; `""` leaves the choice to reticulate.
#' @return The Python module `hiercompare` (a reticulate module object).
#' @examples
#' \dontrun{
#' Sys.setenv(HIERCOMPARE_VENV = "/path/to/hiercompare/.venv")
#' hc <- hc_module()
#' hc$backends()
#' }
#' @export
hc_module <- function(venv = Sys.getenv("HIERCOMPARE_VENV", "")) {
  python <- hc_venv_python(venv)
  if (!is.null(python) && reticulate::py_available(initialize = FALSE)) {
    hc_check_running(venv)
  }
  if (is.null(.hc_state$module)) {
    .hc_state$module <- hc_import(python)
  }
  .hc_state$module
}

# The interpreter of `venv`, or NULL when no environment is named.
hc_venv_python <- function(venv) {
  if (!is.character(venv) || length(venv) != 1L || is.na(venv)) {
    stop("venv must be one path (a character string); got ", deparse(venv)[1L], call. = FALSE)
  }
  if (!nzchar(venv)) {
    return(NULL)
  }
  exe <- if (.Platform$OS.type == "windows") file.path("Scripts", "python.exe") else file.path("bin", "python")
  python <- file.path(path.expand(venv), exe)
  if (!file.exists(python)) {
    stop("HIERCOMPARE_VENV (or venv =) is '", venv, "', which has no ", exe, ". Set it to the .venv folder ",
         "that `make install` creates in a hiercompare checkout.", call. = FALSE)
  }
  # the folder is resolved, the interpreter's own link is not: a virtual environment is known by its path
  file.path(normalizePath(path.expand(venv), mustWork = TRUE), exe)
}

hc_import <- function(python) {
  if (!reticulate::py_available(initialize = FALSE)) {
    if (!is.null(python)) {
      # RETICULATE_PYTHON is the first thing reticulate's discovery reads, before it looks for Poetry or
      # Pipenv projects; it is set only while Python starts.
      old <- Sys.getenv("RETICULATE_PYTHON", unset = NA)
      on.exit(if (is.na(old)) Sys.unsetenv("RETICULATE_PYTHON") else Sys.setenv(RETICULATE_PYTHON = old),
              add = TRUE)
      Sys.setenv(RETICULATE_PYTHON = python)
    } else if (is.na(Sys.getenv("RETICULATE_PYTHON", unset = NA))) {
      restore <- hc_skip_non_poetry_pyproject()
      on.exit(restore(), add = TRUE)
    }
  }
  hc_try_import(python)
}

hc_try_import <- function(python = NULL) {
  tryCatch(reticulate::import("hiercompare"), error = function(e) {
    running <- if (reticulate::py_available(initialize = FALSE)) {
      tryCatch(reticulate::py_config()$python, error = function(e2) NULL)
    }
    used <- if (!is.null(running)) running else python
    where <- if (!is.null(used)) paste0(" by ", used) else ""
    stop("the hiercompare Python package cannot be imported", where, " (", trimws(conditionMessage(e)), "). ",
         "Install it: run `make install` in a hiercompare checkout, then set HIERCOMPARE_VENV to that ",
         "checkout's .venv folder (Sys.setenv(HIERCOMPARE_VENV = \"/path/to/hiercompare/.venv\")) before the ",
         "first hc_* call of the R session.", call. = FALSE)
  })
}

# Python is already running: it must be the one of `venv`.
hc_check_running <- function(venv) {
  prefix <- reticulate::import("sys")$prefix
  want <- normalizePath(path.expand(venv), mustWork = FALSE)
  if (!identical(normalizePath(prefix, mustWork = FALSE), want)) {
    stop("Python is already running in this R session from ", prefix, ", so HIERCOMPARE_VENV (or venv =) '",
         venv, "' cannot take effect; restart R and set it before the first hc_* call (or before anything ",
         "else starts Python).", call. = FALSE)
  }
  invisible(TRUE)
}

# reticulate 1.28 (py_discover_config -> poetry_config) takes any pyproject.toml that here::here() finds
# from the working directory for a Poetry project: it reads toml[["tool"]][["poetry"]], which is NULL, not
# an error, for a file without that table, and then warns that the poetry command is missing (or runs
# `poetry env info` where poetry is installed). When the file has no [tool.poetry] table, point reticulate's
# own option for the project folder at an empty folder while Python starts. Returns the function that
# restores the option.
hc_skip_non_poetry_pyproject <- function() {
  if (!is.null(getOption("reticulate.poetry.project"))) {
    return(function() invisible(NULL))  # the user chose the project
  }
  root <- tryCatch(here::here(), error = function(e) "")
  file <- file.path(root, "pyproject.toml")
  if (!nzchar(root) || !file.exists(file)) {
    return(function() invisible(NULL))
  }
  if (any(grepl("^\\s*\\[+\\s*tool\\.poetry\\b", readLines(file, warn = FALSE)))) {
    return(function() invisible(NULL))  # a real Poetry project: reticulate activates it
  }
  empty <- file.path(tempdir(), "hiercompare-no-poetry-project")
  dir.create(empty, showWarnings = FALSE)
  old <- options(reticulate.poetry.project = empty)
  function() options(old)
}
