# R's lm on a design matrix built by hiercompare (the ols backend's design), for the Python-vs-R check.
# `weights` (prior weights) and `offset` are numeric vectors or NULL.
hc_fit_lm <- function(X, y, weights = NULL, offset = NULL) {
  run <- hc_capture(stats::lm(y ~ 0 + X, weights = weights, offset = offset))
  if (inherits(run$value, "hc_error")) return(hc_json(list(error = run$value$message)))
  fit <- run$value
  if (anyNA(stats::coef(fit))) {
    return(hc_json(list(error = "lm: the design is rank deficient (aliased coefficients are NA)")))
  }
  s <- summary(fit)
  hc_json(list(
    coef = I(unname(stats::coef(fit))),
    vcov = I(as.vector(stats::vcov(fit))),
    sigma = s$sigma,
    df_residual = fit$df.residual,
    loglik = as.numeric(stats::logLik(fit)),
    warnings = I(c(run$warnings, run$messages))
  ))
}
