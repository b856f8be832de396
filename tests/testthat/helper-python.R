# Skip (with the reason) when the hiercompare Python package cannot be imported in this R session.
skip_without_python <- function() {
  why <- tryCatch({
    hc_module()
    NULL
  }, error = function(e) conditionMessage(e))
  if (!is.null(why)) skip(paste("the hiercompare Python package is not available:", why))
}
