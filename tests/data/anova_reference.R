# Reference numbers for tests/test_comparison.py: lme4's anova() of ML fits on the committed CSV copies of
# lme4's sleepstudy and Pastes and mlmRev's Exam.
#
# Regenerate (from the repository root):  Rscript tests/data/anova_reference.R
# which writes tests/data/anova_reference.csv; the R-marked test sources this file and calls
# hc_anova_reference() to check the stored numbers and the Python side against a live R.
#
# One row per model, in anova()'s order (by npar); Chisq, Df and p_chisq compare a row with the row above
# (NA on a set's first row). Numbers are written with 17 significant digits.

hc_anova_sets <- list(
  sleepstudy = list(file = "tests/data/sleepstudy.csv", formulas = c(
    "Reaction ~ 1 + (1 | Subject)",
    "Reaction ~ Days + (1 | Subject)",
    "Reaction ~ Days + (Days || Subject)",
    "Reaction ~ Days + (Days | Subject)")),
  pastes = list(file = "hiercompare/data/pastes.csv", formulas = c(
    "strength ~ 1 + (1 | batch)",
    "strength ~ 1 + (1 | batch/cask)")),
  exam = list(file = "hiercompare/data/exam.csv", formulas = c(
    "normexam ~ standLRT + (1 | school)",
    "normexam ~ standLRT + sex + (1 | school)",
    "normexam ~ standLRT + sex + (1 + standLRT | school)",
    "normexam ~ standLRT + sex + schavg + (1 + standLRT | school)"))
)

hc_anova_reference <- function(root = ".", out = NULL) {
  suppressPackageStartupMessages(library(lme4))
  rows <- list()
  for (name in names(hc_anova_sets)) {
    set <- hc_anova_sets[[name]]
    data <- utils::read.csv(file.path(root, set$file), stringsAsFactors = TRUE)
    env <- new.env()
    ids <- paste0("m", seq_along(set$formulas))
    for (i in seq_along(ids))
      assign(ids[i], lme4::lmer(stats::as.formula(set$formulas[i]), data = data, REML = FALSE), envir = env)
    tab <- eval(as.call(c(as.name("anova"), lapply(ids, as.name))), envir = env)
    idx <- match(rownames(tab), ids)
    rows[[name]] <- data.frame(
      dataset = name, formula = set$formulas[idx], npar = tab$npar,
      nobs = vapply(ids[idx], function(m) stats::nobs(get(m, envir = env)), 0L),
      logLik = tab$logLik, AIC = tab$AIC, BIC = tab$BIC, deviance = tab$deviance,
      Chisq = tab$Chisq, Df = tab$Df, p_chisq = tab[["Pr(>Chisq)"]], stringsAsFactors = FALSE)
  }
  res <- do.call(rbind, unname(rows))
  rownames(res) <- NULL
  if (!is.null(out)) {
    txt <- res
    for (col in c("logLik", "AIC", "BIC", "deviance", "Chisq", "p_chisq"))
      txt[[col]] <- ifelse(is.na(res[[col]]), NA, sprintf("%.17g", res[[col]]))
    utils::write.csv(txt, out, row.names = FALSE, na = "")
  }
  res
}

if (sys.nframe() == 0L) {
  hc_anova_reference(".", "tests/data/anova_reference.csv")
  cat("lme4", format(utils::packageVersion("lme4")), "on", R.version.string, "\n")
}
