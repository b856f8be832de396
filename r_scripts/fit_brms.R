# brms fit for hiercompare (sourced after common.R by hiercompare/rbridge.py).
#
# What reaches this file from Python:
#   * `data`: an R data.frame (grouping columns as factors of safe tokens, numbers as doubles), never code;
#   * `formula`: brms formula text that hiercompare rebuilt from a parsed spec and checked against its grammar;
#   * the priors as DATA: parallel vectors (class, coef, kind, p1, p2, p3). The prior strings handed to
#     brms::set_prior are built here from fixed templates and the names of Stan data variables
#     (hc_prior_<row>_<k>); every number travels as a Stan data variable (a brms stanvar), so the Stan program
#     depends only on the model's structure and one compiled model serves every data set of that structure.
#
# Compiled models are cached by the MD5 of the Stan program (plus R / brms / rstan / StanHeaders versions):
# in this process in `.hc_brms_models`, across processes as <cache_dir>/<key>.rds (an rstan stanmodel whose
# shared object rstan stores inside it, so a new process loads it without compiling).

.hc_brms_models <- new.env(parent = emptyenv())

.hc_brms_kinds <- list(normal = 2L, student_t = 3L, lkj = 1L, gamma = 2L)
.hc_brms_classes <- c("b", "sd", "sigma", "cor", "shape")

hc_brms_priors <- function(cls, coef, kind, p1, p2, p3) {
  n <- length(cls)
  if (!n || length(coef) != n || length(kind) != n || length(p1) != n || length(p2) != n || length(p3) != n)
    stop("hiercompare: the prior table is empty or its columns differ in length")
  priors <- list()
  stanvars <- list()
  for (i in seq_len(n)) {
    if (!cls[i] %in% .hc_brms_classes) stop("hiercompare: unknown prior class ", deparse(cls[i]))
    if (!kind[i] %in% names(.hc_brms_kinds)) stop("hiercompare: unknown prior distribution ", deparse(kind[i]))
    if (nzchar(coef[i]) && !grepl("^[A-Za-z][A-Za-z0-9_.:]*$", coef[i]))
      stop("hiercompare: invalid coefficient name ", deparse(coef[i]))
    pars <- c(p1[i], p2[i], p3[i])[seq_len(.hc_brms_kinds[[kind[i]]])]
    if (!all(is.finite(pars))) stop("hiercompare: non-finite prior parameter in row ", i)
    nm <- sprintf("hc_prior_%d_%d", i, seq_along(pars))
    for (k in seq_along(pars)) stanvars[[length(stanvars) + 1L]] <- brms::stanvar(x = pars[k], name = nm[k])
    txt <- sprintf("%s(%s)", kind[i], paste(nm, collapse = ", "))
    priors[[i]] <- brms::set_prior(txt, class = cls[i], coef = coef[i])
  }
  list(prior = Reduce(`+`, priors), stanvars = Reduce(`+`, stanvars),
       text = vapply(priors, function(p) p$prior, ""))
}

# The compiler flags for Stan models. R's own flags on Debian are "-g -O2 ..."; Stan's C++ templates run about
# 15% faster at -O3 and compile faster without -g (bench/brms_flags.py measures both, side by side). A user's
# own Makevars (R_MAKEVARS_USER, ~/.R/Makevars-<platform>, ~/.R/Makevars) is respected: then it is used as it
# is and `path` is "". `text` (the flags in force) is part of the cache key, so a change of flags recompiles.
# -march=native is deliberately absent: rstan 2.21 models built with it crash here ("double free or
# corruption") because StanHeaders' precompiled parts disagree on Eigen's alignment.
hc_brms_makevars <- function(ours, dot_r = path.expand(file.path("~", ".R"))) {
  user <- Sys.getenv("R_MAKEVARS_USER")
  if (!nzchar(user)) {
    home <- file.path(dot_r, c(paste0("Makevars-", Sys.getenv("R_PLATFORM")), "Makevars"))
    user <- home[file.exists(home)][1]
  }
  if (!is.na(user) && nzchar(user)) {
    text <- if (file.exists(user)) readLines(user, warn = FALSE) else character(0)
    return(list(path = "", text = c(paste("user Makevars", user), text)))
  }
  if (!nzchar(ours) || !file.exists(ours)) return(list(path = "", text = "R's default flags"))
  list(path = ours, text = c("hiercompare Makevars", readLines(ours, warn = FALSE)))
}

hc_brms_key <- function(code, flags = character(0)) {
  versions <- c(R.version.string, as.character(utils::packageVersion("brms")),
                as.character(utils::packageVersion("rstan")), as.character(utils::packageVersion("StanHeaders")))
  tmp <- tempfile(fileext = ".stan")
  on.exit(unlink(tmp))
  writeLines(c(code, versions, flags), tmp, useBytes = TRUE)
  unname(tools::md5sum(tmp))
}

# Write a cache entry atomically (a temporary file, then a rename); returns a note if it could not.
hc_brms_save <- function(model, code, path) {
  tryCatch({
    dir.create(dirname(path), recursive = TRUE, showWarnings = FALSE)
    tmp <- paste0(path, ".tmp", Sys.getpid())
    saveRDS(list(code = code, model = model, created = format(Sys.time(), tz = "UTC", usetz = TRUE)), tmp)
    if (!file.rename(tmp, path)) {  # another process may have written it meanwhile: theirs is as good
      unlink(tmp)
    }
    character(0)
  }, error = function(e) paste0("could not write the brms model cache ", path, ": ", conditionMessage(e)))
}

# The compiled model for `code`: from this process, else from the disk cache, else compiled (and saved).
hc_brms_model <- function(code, key, cache_dir, makevars = list(path = "")) {
  path <- if (nzchar(cache_dir)) file.path(cache_dir, paste0(key, ".rds")) else ""
  notes <- character(0)
  if (exists(key, envir = .hc_brms_models, inherits = FALSE)) {
    model <- get(key, envir = .hc_brms_models)
    if (nzchar(path) && !file.exists(path)) notes <- c(notes, hc_brms_save(model, code, path))
    return(list(model = model, source = "memory", seconds = 0, path = path, notes = notes))
  }
  t0 <- proc.time()[["elapsed"]]
  if (nzchar(path) && file.exists(path)) {
    obj <- tryCatch(readRDS(path), error = function(e) e)
    usable <- is.list(obj) && identical(obj$code, code) && methods::is(obj$model, "stanmodel") &&
      # the shared object must load here (it would not after a change of compiler or system libraries)
      isTRUE(tryCatch(is.function(rstan:::grab_cxxfun(obj$model@dso)), error = function(e) FALSE))
    if (usable) {
      assign(key, obj$model, envir = .hc_brms_models)
      return(list(model = obj$model, source = "disk", seconds = proc.time()[["elapsed"]] - t0, path = path,
                  notes = notes))
    }
    notes <- c(notes, paste0("cache entry ", path, " was unreadable or did not match the Stan program; recompiled"))
  }
  if (nzchar(makevars$path)) {  # only for this compile; R CMD SHLIB reads it from the environment
    before <- Sys.getenv("R_MAKEVARS_USER", unset = NA)
    Sys.setenv(R_MAKEVARS_USER = makevars$path)
    on.exit(if (is.na(before)) Sys.unsetenv("R_MAKEVARS_USER") else Sys.setenv(R_MAKEVARS_USER = before),
            add = TRUE)
  }
  model <- rstan::stan_model(model_code = code, model_name = paste0("hc_brms_", substr(key, 1, 8)),
                             save_dso = TRUE)
  assign(key, model, envir = .hc_brms_models)
  seconds <- proc.time()[["elapsed"]] - t0
  if (nzchar(path)) notes <- c(notes, hc_brms_save(model, code, path))
  list(model = model, source = "compiled", seconds = seconds, path = path, notes = notes)
}

# rstan reports what stanc / the C++ compiler said as messages and ends with "due to the above error":
# keep that text (its last 40 lines) in the error.
hc_brms_compile_error <- function(got) {
  paste(c("Stan could not compile the brms model:", utils::tail(got$messages, 40), got$value$message),
        collapse = "\n")
}

hc_brms_summ <- function(m) {
  m <- as.matrix(m)
  list(mean = I(unname(colMeans(m))), sd = I(unname(apply(m, 2, stats::sd))),
       lo = I(unname(apply(m, 2, stats::quantile, probs = 0.025, names = FALSE))),
       hi = I(unname(apply(m, 2, stats::quantile, probs = 0.975, names = FALSE))))
}

hc_brms_convergence <- function(x, vars) {
  arr <- as.array(x$fit, pars = vars)  # iterations x chains x variables (post-warmup)
  if (requireNamespace("posterior", quietly = TRUE)) {
    s <- posterior::summarise_draws(posterior::as_draws_array(arr), "rhat", "ess_bulk", "ess_tail", "mcse_mean")
    out <- list(variable = s$variable, rhat = s$rhat, ess_bulk = s$ess_bulk, ess_tail = s$ess_tail,
                mcse = s$mcse_mean, tool = paste0("posterior ", utils::packageVersion("posterior"), " summarise_draws"))
  } else {
    m <- rstan::monitor(arr, warmup = 0, print = FALSE)
    out <- list(variable = rownames(m), rhat = m[, "Rhat"], ess_bulk = m[, "Bulk_ESS"],
                ess_tail = m[, "Tail_ESS"], mcse = m[, "se_mean"], tool = "rstan::monitor")
  }
  out
}

# Steps 1 and 2 of a fit: the brms model (validated, Stan code generated) and its compiled Stan model (from
# memory, the disk cache, or a compile). Returns list(x, code, key, compiled) or list(error = <JSON>).
hc_brms_prepare <- function(data, formula, family, cls, coef, kind, p1, p2, p3, cache_dir, makevars_file) {
  suppressPackageStartupMessages({ requireNamespace("brms"); requireNamespace("rstan") })
  # binomial: a 0/1 response (bernoulli); binomial_trials: y | trials(n) in the formula; negbinomial: NB2 (shape)
  fam <- switch(family, gaussian = stats::gaussian(), binomial = brms::bernoulli(), poisson = stats::poisson(),
                binomial_trials = stats::binomial(), negbinomial = brms::negbinomial(),
                stop("hiercompare: unsupported family ", deparse(family)))
  # 1. the model: validated by brms, Stan code generated, nothing compiled (cheap)
  setup <- hc_capture({
    pri <- hc_brms_priors(cls, coef, kind, p1, p2, p3)
    f <- brms::bf(stats::as.formula(formula, env = globalenv()))
    x <- brms::brm(f, data = data, family = fam, prior = pri$prior, stanvars = pri$stanvars, empty = TRUE,
                   silent = 2)
    list(x = x, pri = pri)
  })
  if (inherits(setup$value, "hc_error"))
    return(list(error = hc_json(list(error = paste("brms rejected the model:", setup$value$message),
                                     stage = "brms"))))
  x <- setup$value$x
  code <- x$model
  makevars <- hc_brms_makevars(makevars_file)
  key <- hc_brms_key(code, makevars$text)
  # 2. the compiled model (memory, disk, or a compile)
  got <- hc_capture(hc_brms_model(code, key, cache_dir, makevars))
  if (inherits(got$value, "hc_error"))
    return(list(error = hc_json(list(error = hc_brms_compile_error(got), stage = "compile", stan_code = code))))
  list(x = x, code = code, key = key, compiled = got$value, setup = setup, got = got, makevars = makevars)
}

# Only steps 1 and 2: make sure the compiled model is in the disk cache (used to compile ahead, in another
# process, while other work runs).
hc_precompile_brms <- function(data, formula, family, cls, coef, kind, p1, p2, p3, cache_dir, makevars_file) {
  prep <- hc_brms_prepare(data, formula, family, cls, coef, kind, p1, p2, p3, cache_dir, makevars_file)
  if (!is.null(prep$error)) return(prep$error)
  hc_json(list(key = prep$key, source = prep$compiled$source, seconds = prep$compiled$seconds,
               path = prep$compiled$path, notes = I(prep$compiled$notes), flags = I(prep$makevars$text)))
}

# rstan::sampling, with the chains run in forked R processes when `fork` (Python says so only when it has no
# other thread, so a fork cannot copy a lock that another thread holds). rstan itself forks only when R is not
# interactive or stdout is a terminal; R embedded by rpy2 is interactive, so rstan otherwise starts a socket
# cluster of new R processes (~5 s per fit). The chains are the ones rstan's own parallel path runs: one chain
# each, the same seed, chain_id = 1..chains, merged with sflist2stanfit; so the draws are identical.
hc_brms_sampling <- function(model, sdata, chains, cores, fork, ...) {
  if (!(isTRUE(fork) && cores > 1L && chains > 1L && .Platform$OS.type == "unix"))
    return(rstan::sampling(model, data = sdata, chains = chains, cores = cores, ...))
  fits <- parallel::mclapply(seq_len(chains), function(i)
    rstan::sampling(model, data = sdata, chains = 1L, cores = 1L, chain_id = i, ...),
    mc.preschedule = FALSE, mc.cores = min(chains, cores))
  # like rstan's own parallel path: failed chains are dropped with a warning, an error only if all failed
  failed <- !vapply(fits, function(f) methods::is(f, "stanfit") && f@mode == 0L && length(f@sim) > 0, TRUE)
  if (any(failed)) {
    why <- vapply(fits[failed], function(f) {
      if (is.null(f)) "its R process died" else if (inherits(f, "try-error")) trimws(as.character(f)) else "no draws"
    }, "")
    msg <- paste0("chain(s) ", paste(which(failed), collapse = ", "), " failed: ", paste(unique(why), collapse = "; "))
    if (all(failed)) stop(msg)
    warning(msg, "; the fit uses the other chain(s)")
  }
  rstan::sflist2stanfit(fits[!failed])
}

hc_fit_brms <- function(data, formula, family, cls, coef, kind, p1, p2, p3, chains, iter, warmup, cores,
                        seed, adapt_delta, max_treedepth, cache_dir, makevars_file, fork = FALSE,
                        keep_draws = 0L) {
  chains <- as.integer(chains); iter <- as.integer(iter); warmup <- as.integer(warmup); cores <- as.integer(cores)
  seed <- if (is.na(seed)) sample.int(.Machine$integer.max, 1L) else as.integer(seed)
  prep <- hc_brms_prepare(data, formula, family, cls, coef, kind, p1, p2, p3, cache_dir, makevars_file)
  if (!is.null(prep$error)) return(prep$error)
  x <- prep$x
  code <- prep$code
  key <- prep$key
  compiled <- prep$compiled
  setup <- prep$setup
  got <- prep$got

  # 3. sampling with the compiled model on this data (what update(fit, newdata, recompile = FALSE) does)
  t0 <- proc.time()[["elapsed"]]
  printed <- character(0)
  run <- hc_capture({
    sdata <- brms::standata(x)
    printed <- utils::capture.output(
      sfit <- hc_brms_sampling(compiled$model, sdata, chains, cores, fork, iter = warmup + iter,
                              warmup = warmup, seed = seed,
                              control = list(adapt_delta = adapt_delta, max_treedepth = max_treedepth),
                              pars = brms:::exclude_pars(x), include = FALSE, refresh = 0,
                              show_messages = FALSE, open_progress = FALSE))
    list(sdata = sdata, sfit = sfit)
  })
  sampling_seconds <- proc.time()[["elapsed"]] - t0
  if (inherits(run$value, "hc_error"))
    return(hc_json(list(error = paste("sampling failed:", run$value$message), stage = "sampling")))
  sfit <- run$value$sfit
  if (sfit@mode != 0L || !length(sfit@sim))
    return(hc_json(list(error = paste(c("Stan did not return draws (every chain failed).", run$warnings,
                                        utils::tail(printed, 20)), collapse = "\n"), stage = "sampling")))
  x$fit <- sfit
  x <- brms:::rename_pars(x)
  sdata <- run$value$sdata

  # 4. summaries (posterior mean, SD, 2.5% and 97.5% quantiles of the draws; Monte Carlo SE of the mean)
  fe <- brms::fixef(x, summary = FALSE)
  dm <- as.matrix(x$fit)
  pars <- colnames(dm)
  conv_vars <- pars[grepl("^(b_|sd_|cor_|r_)", pars) | pars %in% c("sigma", "shape")]
  conv <- hc_brms_convergence(x, conv_vars)
  mcse_of <- function(names) I(unname(stats::setNames(conv$mcse, conv$variable)[names]))
  rp <- list(group = character(0), kind = character(0), coef1 = character(0), coef2 = character(0), cols = character(0))
  add_rp <- function(group, kind, c1, c2, col) {
    rp$group <<- c(rp$group, group); rp$kind <<- c(rp$kind, kind)
    rp$coef1 <<- c(rp$coef1, c1); rp$coef2 <<- c(rp$coef2, c2); rp$cols <<- c(rp$cols, col)
  }
  re_tab <- x$ranef
  for (id in unique(re_tab$id)) {
    rows <- re_tab[re_tab$id == id, ]
    g <- rows$group[1]
    for (k in seq_len(nrow(rows))) add_rp(g, "sd", rows$coef[k], "", paste0("sd_", g, "__", rows$coef[k]))
    if (isTRUE(rows$cor[1]) && nrow(rows) > 1) {
      for (b in 2:nrow(rows)) for (a in 1:(b - 1))
        add_rp(g, "cor", rows$coef[a], rows$coef[b], paste0("cor_", g, "__", rows$coef[a], "__", rows$coef[b]))
    }
  }
  if (family == "gaussian") add_rp("Residual", "sigma", "", "", "sigma")
  if (family == "negbinomial") add_rp("Dispersion", "shape", "", "", "shape")
  missing <- setdiff(rp$cols, colnames(dm))
  if (length(missing)) return(hc_json(list(error = paste("brms draws lack", paste(missing, collapse = ", ")),
                                           stage = "summary")))
  rp_summ <- c(hc_brms_summ(dm[, rp$cols, drop = FALSE]), list(mcse = mcse_of(rp$cols)))
  # posterior draws kept for predictive checks: `keep_draws` of them, evenly spaced over the chains, every
  # parameter taken from the same rows of dm (one joint draw per row)
  keep <- min(as.integer(keep_draws), nrow(dm))
  idx <- if (keep > 0L) unique(round(seq(1, nrow(dm), length.out = keep))) else integer(0)
  kept <- function(cols) {  # a matrix: kept draws x cols
    lack <- setdiff(cols, colnames(dm))
    if (length(lack)) stop("hiercompare: brms draws lack ", paste(utils::head(lack, 5), collapse = ", "))
    unname(dm[idx, cols, drop = FALSE])
  }

  re <- brms::ranef(x, summary = FALSE)
  levels_attr <- attr(re_tab, "levels")
  ranef_out <- list()
  for (g in names(re)) {
    arr <- re[[g]]  # draws x levels x coefs; levels in the order of brms's grouping index J_<id>
    id <- re_tab$id[re_tab$group == g][1]
    J <- sdata[[paste0("J_", id)]]
    if (is.null(J) || length(J) != nrow(data) || dim(arr)[2] != length(levels_attr[[g]]) ||
        max(J) != dim(arr)[2])
      return(hc_json(list(error = paste("cannot match brms's levels of", g, "to the rows"), stage = "summary")))
    s <- lapply(dimnames(arr)[[3]], function(cf) c(
      hc_brms_summ(arr[, , cf, drop = TRUE]),  # brms's names of these draws: r_<group>[<level>,<coef>]
      list(mcse = mcse_of(paste0("r_", g, "[", dimnames(arr)[[2]], ",", cf, "]")))))
    ranef_out[[length(ranef_out) + 1L]] <- list(
      group = g, coefs = I(dimnames(arr)[[3]]), n_levels = dim(arr)[2], J = I(as.integer(J)),
      mean = I(lapply(s, `[[`, "mean")), sd = I(lapply(s, `[[`, "sd")),
      lo = I(lapply(s, `[[`, "lo")), hi = I(lapply(s, `[[`, "hi")), mcse = I(lapply(s, `[[`, "mcse")),
      draws = if (length(idx)) I(lapply(dimnames(arr)[[3]], function(cf)
        kept(paste0("r_", g, "[", dimnames(arr)[[2]], ",", cf, "]")))) else NULL)
  }

  # 5. sampler diagnostics
  sp <- rstan::get_sampler_params(x$fit, inc_warmup = FALSE)
  divergent <- sum(vapply(sp, function(s) sum(s[, "divergent__"]), 0))
  treedepth <- sum(vapply(sp, function(s) sum(s[, "treedepth__"] >= max_treedepth), 0))
  leapfrog <- mean(vapply(sp, function(s) mean(s[, "n_leapfrog__"]), 0))
  elapsed <- rstan::get_elapsed_time(x$fit)

  hc_json(list(
    fixef = c(list(names = I(colnames(fe))), hc_brms_summ(fe), list(mcse = mcse_of(paste0("b_", colnames(fe))))),
    ran_pars = c(list(group = I(rp$group), kind = I(rp$kind), coef1 = I(rp$coef1), coef2 = I(rp$coef2)), rp_summ),
    ranef = ranef_out,
    kept_draws = if (length(idx)) list(n = length(idx), total = nrow(dm), b = kept(paste0("b_", colnames(fe))),
                                  sigma = if (family == "gaussian") I(as.vector(kept("sigma"))) else NULL,
                                  shape = if (family == "negbinomial") I(as.vector(kept("shape"))) else NULL)
                 else NULL,
    convergence = list(variable = I(conv$variable), rhat = I(conv$rhat), ess_bulk = I(conv$ess_bulk),
                       ess_tail = I(conv$ess_tail), mcse = I(conv$mcse), tool = conv$tool),
    divergences = divergent,
    treedepth_hits = treedepth,
    mean_leapfrog = leapfrog,
    chain_seconds = list(warmup = I(unname(elapsed[, "warmup"])), sample = I(unname(elapsed[, "sample"]))),
    seed = seed,
    nobs = nrow(data),
    draws = nrow(dm),  # kept draws over the chains that ran
    stan_code = code,
    brms_formula = paste(deparse(x$formula$formula, width.cutoff = 500L), collapse = " "),
    prior_text = I(setup$value$pri$text),
    cache = list(key = key, source = compiled$source, seconds = compiled$seconds, path = compiled$path,
                 notes = I(compiled$notes), flags = I(prep$makevars$text)),
    sampling_seconds = sampling_seconds,
    warnings = I(c(setup$warnings, got$warnings, run$warnings)),
    messages = I(c(setup$messages, got$messages, run$messages))
  ))
}
