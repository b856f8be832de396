# R's glm (binomial with trials, poisson) or MASS::glm.nb (negbinomial) on a design matrix built by hiercompare
# (the glm backend's sum-to-zero dummy design), for the Python-vs-R check. Every argument is numbers: X (matrix),
# y (successes or counts), n (binomial trials), offset; family a string.
hc_fit_glm <- function(X, y, n, offset, family) {
  ctrl <- stats::glm.control(epsilon = 1e-12, maxit = 100)
  run <- hc_capture(switch(family,
    binomial = stats::glm(cbind(y, n - y) ~ 0 + X, family = stats::binomial(), offset = offset, control = ctrl),
    poisson = stats::glm(y ~ 0 + X, family = stats::poisson(), offset = offset, control = ctrl),
    negbinomial = MASS::glm.nb(y ~ 0 + X + offset(offset), control = ctrl),
    stop("unknown family ", family)))
  if (inherits(run$value, "hc_error")) return(hc_json(list(error = run$value$message)))
  fit <- run$value
  if (anyNA(stats::coef(fit))) {
    return(hc_json(list(error = "glm: the design is rank deficient (aliased coefficients are NA)")))
  }
  if (family != "negbinomial") {  # again from the optimum: vcov uses the weights of the iteration before the last
    fit <- stats::glm(fit$formula, family = fit$family, offset = offset, control = ctrl, start = stats::coef(fit))
  }
  theta <- NULL
  loglik <- as.numeric(stats::logLik(fit))
  vcov <- stats::vcov(fit)
  converged <- isTRUE(fit$converged)
  if (family == "negbinomial") {
    # glm.nb stops theta.ml's Newton steps at eps = 1.2e-4; polish theta to the same maximum (steps below 1e-12 theta),
    # refitting the coefficients at each theta (glm with negative.binomial(theta), SEs at dispersion 1)
    theta <- fit$theta
    for (i in 1:50) {
      th <- MASS::theta.ml(y, stats::fitted(fit), limit = 100, eps = 1e-12 * max(1, theta))
      fit <- stats::glm(y ~ 0 + X, family = MASS::negative.binomial(th), offset = offset, control = ctrl,
                        start = stats::coef(fit))
      done <- abs(th - theta) <= 1e-11 * th
      theta <- as.numeric(th)
      if (done) break
    }
    converged <- converged && done && isTRUE(fit$converged)
    vcov <- summary(fit, dispersion = 1)$cov.scaled
    loglik <- sum(stats::dnbinom(y, size = theta, mu = stats::fitted(fit), log = TRUE))
  }
  hc_json(list(
    coef = I(unname(stats::coef(fit))),
    vcov = I(as.vector(vcov)),
    df_residual = fit$df.residual - (family == "negbinomial"),
    loglik = loglik,
    converged = converged,
    theta = theta,
    warnings = I(c(run$warnings, run$messages))
  ))
}
