#' hiercompare: one hierarchical model on many backends, from R
#'
#' R functions around the Python package hiercompare, called through reticulate. Fit one lme4-style
#' hierarchical model on several backends ([hc_fit()]), read the result in broom.mixed's layout with R's
#' term names ([hc_tidy()]), compare fits ([hc_compare()]) and run simulation studies ([hc_study()],
#' [hc_report()]).
#'
#' @section Python:
#' The Python package is imported at the first call of a `hc_*` function, not when this package loads.
#' Set the environment variable `HIERCOMPARE_VENV` to the `.venv` folder that `make install` creates in a
#' hiercompare checkout before that first call; hiercompare then starts exactly that interpreter. Without
#' it, reticulate's own discovery chooses (`RETICULATE_PYTHON`, virtual environments, `python3` on the
#' `PATH`). See [hc_module()].
#'
#' @section R backends:
#' The Python package's R backends (`lme4`, `r_lm`, `brms`) run R through rpy2, which cannot start a second
#' R inside this one: from R they report themselves unavailable. Fit those models with R itself (e.g.
#' `lme4::lmer`) and compare with [hc_tidy()], whose term names are R's.
#' @keywords internal
"_PACKAGE"
