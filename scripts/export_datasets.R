# Writes hiercompare/data/*.csv from the R packages that ship them (Debian: r-cran-mlmrev, r-cran-nlme,
# r-cran-lme4). Run from the repository root: Rscript scripts/export_datasets.R
# Factors are written as their labels; the row order is R's.
suppressPackageStartupMessages({library(mlmRev); library(nlme); library(lme4)})
out <- "hiercompare/data"
w <- function(df, name) {
  df <- as.data.frame(df)
  for (v in names(df)) if (is.factor(df[[v]])) df[[v]] <- as.character(df[[v]])
  write.csv(df, file.path(out, paste0(name, ".csv")), row.names = FALSE)
}
w(mlmRev::Exam, "exam")
w(mlmRev::egsingle, "egsingle")
w(nlme::Oats, "oats")
w(lme4::Pastes, "pastes")
cat(sprintf("mlmRev %s, nlme %s, lme4 %s, %s\n", packageVersion("mlmRev"), packageVersion("nlme"),
            packageVersion("lme4"), R.version.string))
