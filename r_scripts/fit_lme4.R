# lme4 fit for hiercompare. `formula` is a string that hiercompare built from a parsed spec and checked
# against its formula grammar (offset(name) and cbind(name, name) name data columns); `data` arrives as an R
# data.frame (labels as factors), never as code. `weights`: Gaussian prior weights (a numeric vector) or NULL.
# family "negbinomial" is lme4's glmer.nb (NB2; its theta is returned).
hc_fit_lme4 <- function(data, formula, family, reml, optimizer, weights = NULL) {
  suppressPackageStartupMessages(requireNamespace("lme4"))
  f <- stats::as.formula(formula, env = globalenv())
  data$hc_prior_weights__ <- if (is.null(weights)) rep(1, nrow(data)) else weights
  run <- hc_capture(
    if (family == "gaussian") {
      ctrl <- if (optimizer == "default") lme4::lmerControl() else lme4::lmerControl(optimizer = optimizer)
      if (is.null(weights)) lme4::lmer(f, data = data, REML = reml, control = ctrl)
      else lme4::lmer(f, data = data, REML = reml, control = ctrl, weights = hc_prior_weights__)
    } else if (family == "negbinomial") {
      ctrl <- if (optimizer == "default") lme4::glmerControl() else lme4::glmerControl(optimizer = optimizer)
      lme4::glmer.nb(f, data = data, control = ctrl)
    } else {
      fam <- switch(family, binomial = stats::binomial(), poisson = stats::poisson())
      ctrl <- if (optimizer == "default") lme4::glmerControl() else lme4::glmerControl(optimizer = optimizer)
      lme4::glmer(f, data = data, family = fam, control = ctrl)
    })
  if (inherits(run$value, "hc_error")) return(hc_json(list(error = run$value$message)))
  fit <- run$value
  vc <- as.data.frame(lme4::VarCorr(fit), order = "lower.tri")
  re <- as.data.frame(lme4::ranef(fit, condVar = TRUE))
  conv <- fit@optinfo$conv$lme4$messages
  fe <- lme4::fixef(fit)
  hc_json(list(
    fixef_names = I(names(fe)),
    fixef = I(unname(fe)),
    vcov = I(as.vector(as.matrix(stats::vcov(fit)))),
    varcorr = list(grp = I(vc$grp), var1 = I(vc$var1), var2 = I(vc$var2), sdcor = I(vc$sdcor)),
    ranef = list(grpvar = I(as.character(re$grpvar)), term = I(as.character(re$term)),
                 grp = I(as.character(re$grp)), condval = I(re$condval), condsd = I(re$condsd)),
    loglik = as.numeric(stats::logLik(fit)),
    reml = lme4::isREML(fit),
    singular = lme4::isSingular(fit),
    optimizer_code = fit@optinfo$conv$opt,
    conv_messages = I(if (is.null(conv)) character(0) else as.character(conv)),
    warnings = I(run$warnings),
    messages = I(run$messages),
    nobs = stats::nobs(fit),
    theta = if (family == "negbinomial") lme4::getME(fit, "glmer.nb.theta") else NULL
  ))
}
