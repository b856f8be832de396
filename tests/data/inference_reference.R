# Reference numbers for tests/test_inference.py: lmerTest's Satterthwaite and Kenward-Roger (pbkrtest) t-tests
# of every fixed effect, on the committed CSVs (tests/data/sleepstudy.csv, hiercompare/data/{pastes,exam,oats,
# dietox}.csv), with the lme4 estimates they were computed at.
#
# Regenerate (from the repository root):  Rscript tests/data/inference_reference.R
# which writes tests/data/inference_reference.csv; the R-marked test sources this file and calls
# hc_inference_reference() to check the stored numbers and the Python side against a live R.
#
# Fits: lmer(..., control = lmerControl(optimizer = "bobyqa")), REML unless the row says ML, on the CSV as
# read.csv(stringsAsFactors = TRUE) reads it (treatment contrasts, levels sorted, as the Python side).
# Rows, one per coefficient and method (kind "coef"):
#   Satterthwaite:  lmerTest::contest(fit, diag(p), joint = FALSE, confint = TRUE)            (REML and ML)
#   Kenward-Roger:  the same with ddf = "Kenward-Roger" (pbkrtest::vcovAdj and Lb_ddf)         (REML only)
# columns estimate, std_error, df, t_value, p_value, conf_low, conf_high (95%); and the estimates the tests put
# into mixedcore (kind "ran_pars": as.data.frame(VarCorr(fit))$sdcor, named as broom.mixed; "loglik").
# Numbers are written with 17 significant digits.

hc_inference_sets <- list(
  list(dataset = "sleepstudy", file = "tests/data/sleepstudy.csv", reml = TRUE,
       formula = "Reaction ~ Days + (Days | Subject)"),
  list(dataset = "sleepstudy", file = "tests/data/sleepstudy.csv", reml = TRUE,
       formula = "Reaction ~ Days + (Days || Subject)"),
  list(dataset = "sleepstudy", file = "tests/data/sleepstudy.csv", reml = FALSE,
       formula = "Reaction ~ Days + (Days | Subject)"),
  list(dataset = "pastes", file = "hiercompare/data/pastes.csv", reml = TRUE,
       formula = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
  list(dataset = "exam", file = "hiercompare/data/exam.csv", reml = TRUE,
       formula = "normexam ~ standLRT + sex + (1 | school)"),
  list(dataset = "exam", file = "hiercompare/data/exam.csv", reml = TRUE,
       formula = "normexam ~ standLRT + schavg + (1 + standLRT | school)"),
  list(dataset = "exam", file = "hiercompare/data/exam.csv", reml = FALSE,
       formula = "normexam ~ standLRT + schavg + (1 + standLRT | school)"),
  list(dataset = "oats", file = "hiercompare/data/oats.csv", reml = TRUE,
       formula = "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)"),
  list(dataset = "dietox", file = "hiercompare/data/dietox.csv", reml = TRUE,
       formula = "Weight ~ Time + (1 | Litter) + (1 + Time | Litter:Pig)"),
  # two boundary (singular) fits: a correlation of -1 (theta's last diagonal entry 0), and a zero SD
  list(dataset = "oats", file = "hiercompare/data/oats.csv", reml = TRUE,
       formula = "yield ~ nitro + Variety + (1 + nitro | Block)"),
  list(dataset = "dietox", file = "hiercompare/data/dietox.csv", reml = TRUE,
       formula = "Weight ~ Time + (1 | Cu) + (1 | Cu:Litter)")
)

hc_inference_reference <- function(root = ".", out = NULL) {
  suppressPackageStartupMessages({library(lme4); library(lmerTest)})
  rows <- list()
  add <- function(set, kind, method, term, vals) {
    rows[[length(rows) + 1L]] <<- data.frame(
      dataset = set$dataset, formula = set$formula, method = if (set$reml) "REML" else "ML", kind = kind,
      ddf = method, term = term, estimate = vals[["estimate"]], std_error = vals[["std_error"]],
      df = vals[["df"]], t_value = vals[["t_value"]], p_value = vals[["p_value"]], conf_low = vals[["conf_low"]],
      conf_high = vals[["conf_high"]], stringsAsFactors = FALSE)
  }
  na <- c(estimate = NA, std_error = NA, df = NA, t_value = NA, p_value = NA, conf_low = NA, conf_high = NA)
  for (set in hc_inference_sets) {
    data <- utils::read.csv(file.path(root, set$file), stringsAsFactors = TRUE)
    m <- lmerTest::lmer(stats::as.formula(set$formula), data = data, REML = set$reml,
                        control = lme4::lmerControl(optimizer = "bobyqa"))
    p <- length(lme4::fixef(m))
    methods <- if (set$reml) c("Satterthwaite", "Kenward-Roger") else "Satterthwaite"
    for (ddf in methods) {
      tab <- lmerTest::contest(m, diag(p), joint = FALSE, confint = TRUE, ddf = ddf)
      for (i in seq_len(p)) {
        add(set, "coef", ddf, names(lme4::fixef(m))[i], c(
          estimate = tab$Estimate[i], std_error = tab[["Std. Error"]][i], df = tab$df[i],
          t_value = tab[["t value"]][i], p_value = tab[["Pr(>|t|)"]][i], conf_low = tab$lower[i],
          conf_high = tab$upper[i]))
      }
    }
    vc <- as.data.frame(lme4::VarCorr(m))
    for (i in seq_len(nrow(vc))) {
      grp <- sub("\\.[0-9]+$", "", vc$grp[i])  # (Days || Subject): lme4's blocks Subject, Subject.1
      term <- if (is.na(vc$var2[i])) paste0("sd__", ifelse(vc$grp[i] == "Residual", "Observation", vc$var1[i]))
              else paste0("cor__", vc$var1[i], ".", vc$var2[i])
      add(set, "ran_pars", grp, term, replace(na, "estimate", vc$sdcor[i]))
    }
    add(set, "loglik", "", "logLik", replace(na, "estimate", as.numeric(stats::logLik(m))))
  }
  res <- do.call(rbind, rows)
  rownames(res) <- NULL
  if (!is.null(out)) {
    txt <- res
    for (col in c("estimate", "std_error", "df", "t_value", "p_value", "conf_low", "conf_high"))
      txt[[col]] <- ifelse(is.na(res[[col]]), NA, sprintf("%.17g", res[[col]]))
    utils::write.csv(txt, out, row.names = FALSE, na = "")
  }
  res
}

if (sys.nframe() == 0L) {
  hc_inference_reference(".", "tests/data/inference_reference.csv")
  cat("lmerTest", format(utils::packageVersion("lmerTest")), "pbkrtest", format(utils::packageVersion("pbkrtest")),
      "lme4", format(utils::packageVersion("lme4")), "on", R.version.string, "\n")
}
