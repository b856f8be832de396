# lme4's REML fits of every formula of hiercompare.datasets, on R's OWN copies of the data (mlmRev, nlme, lme4;
# dietox from the CSV, as geepack is not a Debian package), written with 17 significant digits to
# tests/data/datasets_reference.csv. Run from the repository root: Rscript tests/data/datasets_reference.R
# (lme4 1.1-31, R 4.2.2; the best of lme4's own optimizers nloptwrap (the default), bobyqa, Nelder_Mead and
# nlminbwrap by REML log-likelihood: allFit needs dfoptim and optimx, which Debian does not package).
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(nlme)})
data <- list(exam = mlmRev::Exam, egsingle = mlmRev::egsingle, oats = as.data.frame(nlme::Oats),
             pastes = lme4::Pastes, dietox = read.csv("hiercompare/data/dietox.csv"))
data$oats$Block <- factor(as.character(data$oats$Block))
data$oats$Variety <- factor(as.character(data$oats$Variety))
formulas <- list(
  exam = c("normexam ~ standLRT + (1 | school)", "normexam ~ standLRT + schavg + (1 + standLRT | school)"),
  egsingle = c("math ~ year + (1 | schoolid) + (1 | schoolid:childid)",
               "math ~ year + (1 + year | schoolid) + (1 + year | schoolid:childid)"),
  dietox = c("Weight ~ Time + (1 | Litter) + (1 | Litter:Pig)", "Weight ~ Time + (1 | Litter) + (1 + Time | Litter:Pig)"),
  oats = c("yield ~ nitro + (1 | Block) + (1 | Block:Variety)",
           "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)"),
  pastes = c("strength ~ 1 + (1 | batch) + (1 | batch:cask)", "strength ~ 1 + (1 | batch:cask)"))
rows <- list()
for (d in names(formulas)) for (f in formulas[[d]]) {
  fits <- lapply(c("nloptwrap", "bobyqa", "Nelder_Mead", "nlminbwrap"), function(o) suppressWarnings(
    lmer(as.formula(f), data = data[[d]], REML = TRUE, control = lmerControl(optimizer = o))))
  m <- fits[[which.max(sapply(fits, function(x) as.numeric(logLik(x))))]]
  add <- function(kind, name, value) rows[[length(rows) + 1L]] <<- data.frame(
    dataset = d, formula = f, kind = kind, name = name, value = sprintf("%.17g", value))
  add("loglik", "REML", as.numeric(logLik(m)))
  fe <- fixef(m); for (i in seq_along(fe)) add("fixef", names(fe)[i], fe[[i]])
  se <- sqrt(diag(as.matrix(vcov(m)))); for (i in seq_along(se)) add("fixef_se", names(fe)[i], se[[i]])
  vc <- as.data.frame(VarCorr(m))
  for (i in seq_len(nrow(vc))) {
    term <- if (is.na(vc$var2[i])) paste0("sd__", ifelse(vc$grp[i] == "Residual", "Observation", vc$var1[i]))
            else paste0("cor__", vc$var1[i], ".", vc$var2[i])
    add("ran_pars", paste0(vc$grp[i], "|", term), vc$sdcor[i])
  }
}
write.csv(do.call(rbind, rows), "tests/data/datasets_reference.csv", row.names = FALSE)
