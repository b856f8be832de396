# Helpers shared by the hiercompare R scripts. Results go back to Python as one JSON string.

hc_json <- function(x) {
  jsonlite::toJSON(x, digits = NA, auto_unbox = TRUE, na = "null", null = "null")
}

# Evaluate expr, collecting warnings and messages instead of printing them; errors become a list(error=).
hc_capture <- function(expr) {
  warns <- character(0)
  msgs <- character(0)
  value <- tryCatch(
    withCallingHandlers(expr,
      warning = function(w) {
        warns <<- c(warns, conditionMessage(w))
        invokeRestart("muffleWarning")
      },
      message = function(m) {
        msgs <<- c(msgs, trimws(conditionMessage(m)))
        invokeRestart("muffleMessage")
      }),
    error = function(e) structure(list(message = conditionMessage(e)), class = "hc_error"))
  list(value = value, warnings = warns, messages = msgs)
}

hc_versions <- function(pkgs) {
  out <- list(R = R.version.string)
  for (p in pkgs) {
    out[[p]] <- if (requireNamespace(p, quietly = TRUE)) as.character(utils::packageVersion(p)) else NA
  }
  hc_json(out)
}
