"""Neural-network backends (PyTorch): ``torch`` (LMMNN-style, genuine random effects) and ``torch-embed``
(the seed conversation's embedding network, kept as a labelled baseline).

``torch``: a neural f(x) with estimated variance components
---------------------------------------------------------------
The model is the formula's Gaussian LMM with a learned population-level function added::

    y = f(x) + X beta + Z b + e,   b ~ N(0, sigma^2 Lambda Lambda'),   e ~ N(0, sigma^2 I)

f is a multilayer perceptron on the feature columns (by default every numeric fixed or slope variable,
:func:`~hiercompare.backends.learners.default_features`). f and the variance parameters theta are trained
jointly on the exact Gaussian marginal likelihood (REML or ML) of :mod:`hiercompare.mixedcore`, in the
spirit of LMMNN (Simchoni & Rosset 2021/2023) but without LMMNN's per-minibatch likelihood approximation
(the BLUPs and the gradient's target always come from all rows):

* For fixed theta, beta and b profiled out, the gradient of the marginal negative log-likelihood with
  respect to the vector f(x_1..x_n) is ``-(y - f - X beta_hat - Z b_hat) / sigma^2`` (envelope identity, see
  :mod:`hiercompare.backends.learners`). Every epoch the BLUPs are recomputed at the current f and fixed
  theta (``RandomEffects.update(offset=f, optimise=False)``, one pass over the rows), and one full-batch
  AdamW step is taken on ``0.5 * mean((target - f)^2)`` with the detached target ``y - X beta_hat - Z b_hat``:
  its gradient in f is exactly the NLL gradient times sigma^2 / n.
* Above :data:`AUTO_FULL_BATCH_ROWS` rows (``batch_size="auto"``) an epoch is instead one pass over the rows
  in shuffled minibatches of :data:`AUTO_BATCH` rows, every minibatch step fitting the target computed from
  all rows at the epoch's start (backfitting: f is fitted to the conditional residual for one pass, then the
  BLUPs follow f; the fixed point is the same joint optimum). The full batch cost one forward and backward
  pass over all rows per AdamW step and needed hundreds of steps; minibatches take ``n / AUTO_BATCH`` steps
  per pass, so a few passes do what hundreds did (docs/torch.md has the measurements). theta is then
  refitted and the validation checked every epoch (``refit_every=1``), since an epoch is many steps, and
  ``patience`` is as many epochs as make the full batch's 150 steps (15 checks x 10 epochs), at least 5.
* Every ``refit_every`` epochs theta is re-optimised on the current offset (warm-started mixedcore fit).
* The last layer starts at zero, so epoch 0 is exactly the linear ``native`` fit.
* Epochs are chosen by group-aware validation (:func:`~hiercompare.backends.learners.group_aware_split`):
  the model is trained on the training rows (random effects refitted on those rows only) and after every
  theta refit the held-out rows, which belong to groups seen in training, are predicted with
  ``f + X beta + Z b`` (their own groups' BLUPs). Training stops after ``patience`` refits without a better
  validation MSE. The number of epochs with the lowest validation MSE is then used to **retrain from the
  same initialisation on all rows** (the validation network itself is discarded), and the random effects
  are fitted a last time on the final offset.
* Identifiability: f and the linear fixed terms overlap (f can contain any linear function of x). After
  training, f is projected off the fixed design on the fitting rows (``orthogonalize=True``, default):
  ``f <- f - X c`` with ``c`` the least-squares coefficients of f on X. That includes centring (the intercept
  absorbs the mean of f, so the national intercept stays interpretable), and makes the reported linear
  fixed effects the best linear population terms with f the nonlinear remainder. The marginal likelihood, the
  variance components and the BLUPs are exactly invariant to this (beta_hat shifts by c). With
  ``orthogonalize=False`` f is only centred (needs an intercept in the formula).

The Fit's table is :func:`hiercompare.backends.native.tidy_rows` of the final mixedcore result (fixed effects
with Wald intervals, SDs and correlations, BLUPs with prediction-error SDs), all **conditional on the learned
f** (its estimation uncertainty is not propagated): with ``intervals="conditional"`` (the default) those rows
say so in the tidy frame's ``interval`` column (``conditional_on_f``); ``intervals="bootstrap"`` replaces the
fixed effects' and variance parameters' SEs and intervals by a cluster bootstrap over the top-level groups
(f re-learned in every draw), ``intervals="none"`` drops them (:func:`hiercompare.backends.learners.finish_table`,
docs/learners.md). ``loglik`` is the marginal (REML or ML) log-likelihood at the final offset, conditional on f.
``Fit.nonlinear`` evaluates f on new data.

``torch-embed``: the naive baseline (no variance components, no shrinkage)
--------------------------------------------------------------------------
An MLP on ``[standardised features, embedding of the row's group at every level]`` (one learned vector of
``embedding_dim`` numbers per market, per submarket, ...), trained by full-batch AdamW on the mean squared
error with weight decay on the MLP weights only (the embeddings are not penalised: no shrinkage, no
variances). Epochs are chosen on the same group-aware validation split (network prediction of held-out rows
of known groups), then the network is retrained on all rows with that many epochs.

Its *group deviations* are defined by a telescoping replacement of embeddings (h is the trained network,
e_l the row's level-l embedding, and mean_l(G) the unweighted mean of the level-l embeddings of the groups in
the set G)::

    h_0(x) = h(x, mean_1(all level-1 groups), mean_2(all level-2 groups), ...)        population part
    h_l(x) = h(x, e_1, ..., e_l, mean_{l+1}(descendants of the row's level-l group), ...)
    deviation of a level-l group g = mean over g's training rows of [h_l(x) - h_{l-1}(x)]

i.e. a group's deviation is the average change of the prediction when its own embedding replaces the mean
embedding of its siblings (the groups with the same parent), the levels below it staying at the mean of its
descendants. These are reported as ``ran_vals`` ``(Intercept)`` deviations; ``h_0`` is the population part:
its least-squares projection on the fixed design gives the ``fixed`` rows (no standard errors) and the
remainder is ``Fit.nonlinear``. So ``predict()`` = h_0(x) + the row's group deviations, exactly the sum of
``decompose()``; it is the additive approximation of the network, which equals the network's own
prediction on average over every top-level group's training rows (the telescoping sum), but not row by row
(``diagnostics["additive_rmse_vs_network"]`` says by how much). Varying slopes are not represented (no
slope deviations are reported). ``ran_pars`` holds only the residual SD (RMSE of ``predict()`` on the
training rows); the empirical SD of the reported deviations per level is in
``diagnostics["deviation_sd"]``: a description of the point estimates, **not** an estimated variance
component. Unseen groups get the population part.

Binomial, poisson and negbinomial outcomes (``torch`` only)
-----------------------------------------------------------
f(x) enters the linear predictor, eta = offset + f(x) + X beta + Z b, and the model is glmer's GLMM
(:mod:`hiercompare.glmmcore`). Every epoch the conditional modes and beta follow f at fixed theta (their joint
mode); the step on f is one AdamW step on ``0.5 * mean(w * (target - f)^2)`` with the detached working response
``target = f - g / (2 w)``, g the exact gradient of the Laplace-approximated marginal deviance in f at the modes
and w the Fisher weights (:meth:`hiercompare.backends.learners.GlmmRandomEffects.newton_target`), so the loss's
gradient in f is the approximate marginal NLL's (over n). theta, beta and the NB size are re-estimated by the
Laplace likelihood every ``refit_every`` epochs; the validation metric is the held-out rows' mean deviance
(-2 log p) given their groups' modes. The network's output is on the link scale (no response scaling).

Both backends: training in float32 on CUDA when ``torch.cuda.is_available()`` (``torch``: or on ``device``),
else on the CPU (deterministic there for a given seed and thread count; ``torch``'s ``threads`` sets torch's
CPU threads during the fit, 1 by default: this MLP's products are too small to gain from more, and on a 2-core
machine two threads were 2.5x slower than one at a load of 2-3 and 4-20x under heavier load, docs/torch.md);
``torch-embed`` trains full batch; ``seed`` (passed by ``hiercompare.fit(seed=...)``,
None -> 0) seeds the network initialisation (``torch.manual_seed`` inside ``torch.random.fork_rng``, so the
caller's global torch state is untouched) and the numpy validation split. The fitted networks are moved to
the CPU for ``predict``; features with NaN raise DataError there.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd

from ..design import ModelData
from ..errors import DataError, SpecError
from ..results import RESIDUAL, Fit, sd_term, tidy_frame
from ..spec import INTERCEPT
from .base import Backend, reml_or_ml
from .learners import (FAMILIES, check_intervals, default_features, feature_matrix, finish_table, random_effects,
                       subset, validate_then_refit)
from .native import tidy_rows

INSTALL_HINT = ("install PyTorch (CPU build: `pip install torch --index-url https://download.pytorch.org/whl/cpu`) "
                "or run `make install`")


# ---------------------------------------------------------------------------------------------- helpers
def _device(device: str | None = None):
    """``device`` (e.g. "cpu", "cuda"), or CUDA where torch sees it, else the CPU."""
    import torch

    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SpecError(f"device {device!r}: torch sees no CUDA device here")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _mlp(n_in: int, hidden, zero_last: bool):
    import torch
    from torch import nn

    layers = []
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, int(h)), nn.ReLU()]
        prev = int(h)
    last = nn.Linear(prev, 1)
    if zero_last:
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
    layers.append(last)
    return nn.Sequential(*layers)


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator seeded with ``seed`` inside, and restored to the caller's state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op CPU threads set to ``n`` inside (None: left alone), restored after."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _features(md: ModelData, features) -> tuple[str, ...]:
    feats = default_features(md) if features is None else tuple(features)
    if not feats:
        raise SpecError("features must name at least one numeric column")
    missing = [c for c in feats if c not in md.data.columns]
    if missing:
        raise SpecError(
            f"features {missing} are not variables of the formula; the learners see only the formula's columns "
            f"({list(md.data.columns)}). Add them to the fixed part, or choose features among those"
        )
    return feats


def _check_common(md: ModelData, method, hidden, epochs, lr, weight_decay, validation_fraction,
                  families=("gaussian",)) -> str:
    method = reml_or_ml(method)
    if not all(int(h) >= 1 for h in hidden):
        raise SpecError(f"hidden must be a sequence of positive layer widths, got {hidden!r}")
    if int(epochs) < 1:
        raise SpecError(f"epochs must be >= 1, got {epochs!r}")
    if not (lr > 0 and weight_decay >= 0):
        raise SpecError("lr must be > 0 and weight_decay >= 0")
    if not (0 <= validation_fraction < 1):
        raise SpecError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    if md.spec.family not in families:
        raise SpecError(f"this torch backend fits {list(families)}, not {md.spec.family!r}")
    return method


class _Scaler:
    def __init__(self, F: np.ndarray):
        self.mean = F.mean(axis=0)
        sd = F.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)

    def __call__(self, F: np.ndarray) -> np.ndarray:
        return (F - self.mean) / self.sd


class NeuralF:
    """The learned population part f(x) of a ``torch`` fit: ``Fit.nonlinear``.

    ``f(data) = y_scale * net(standardised features) - X(data) @ coef`` where ``coef`` projects f off the fixed
    design of the fitting rows (or is only the mean, for ``orthogonalize=False``). Evaluated on the CPU (the
    network in float32, the result in float64); features are checked with :func:`~hiercompare.backends.learners.feature_matrix` (NaN ->
    DataError).
    """

    def __init__(self, md: ModelData, net, features, scaler: _Scaler, y_scale: float):
        self.md = md
        self.net = net.to("cpu").float().eval()
        self.features = tuple(features)
        self.scaler = scaler
        self.y_scale = float(y_scale)
        self.coef = np.zeros(md.X.shape[1])
        self.shift = 0.0

    def raw(self, F: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            t = torch.as_tensor(self.scaler(F), dtype=torch.float32)
            return self.net(t)[:, 0].numpy().astype(np.float64) * self.y_scale

    def center(self, orthogonalize: bool) -> str:
        g = self.raw(feature_matrix(self.md, self.md.data, self.features))
        X = self.md.X
        if orthogonalize and X.shape[1]:
            self.coef = np.linalg.lstsq(X, g, rcond=None)[0]
            return "f is projected off the fixed design on the fitting rows (includes centring)"
        names = self.md.fixed_names
        if INTERCEPT in names:
            self.coef[names.index(INTERCEPT)] = g.mean()
            return "f is centred on the fitting rows (the intercept absorbs its mean)"
        return "f is not centred: the formula has no intercept to absorb its mean"

    def __call__(self, data: pd.DataFrame) -> np.ndarray:
        F = feature_matrix(self.md, data, self.features)
        g = self.raw(F)
        if not self.coef.any():
            return g
        X = self.md.X if data is self.md.data else self.md.fixed_matrix(data)
        return g - X @ self.coef


# ---------------------------------------------------------------------------------------------- torch (LMMNN)
class TorchBackend(Backend):
    name = "torch"
    families = FAMILIES
    features = frozenset({"offset", "trials"})
    requires = ("torch",)
    install_hint = INSTALL_HINT
    takes_seed = True
    description = ("LMMNN-style: MLP f(x) trained jointly with the variance components on the exact Gaussian "
                   "marginal likelihood (mixedcore); BLUPs conditional on f")


    def versions(self):
        import torch

        return {"torch": torch.__version__}

    def fit(self, md: ModelData, hidden=(64, 64), epochs: int = 1500, lr: float = 0.01,
            weight_decay: float = 1e-4, method: str = "REML", seed: int | None = None, features=None,
            validation_fraction: float = 0.2, refit_every: int | None = None, patience: int | None = None,
            orthogonalize: bool = True, intervals: str = "conditional", bootstrap_draws: int = 200,
            bootstrap_ci: str = "basic",
            batch_size: int | str | None = "auto", threads: int | None = 1, device: str | None = None,
            **options) -> Fit:
        """Options: ``hidden`` layer widths; ``epochs`` (maximum; also the count used without validation);
        ``lr`` and ``weight_decay`` (AdamW); ``batch_size``: ``"auto"`` (full batch up to
        :data:`AUTO_FULL_BATCH_ROWS` rows, else minibatches of :data:`AUTO_BATCH` rows), ``None`` (full batch)
        or rows per step; ``method`` REML/ML; ``seed`` (torch and the
        validation split; None -> 0); ``features`` (numeric formula columns f sees); ``validation_fraction``
        (0: no validation, train ``epochs`` epochs); ``refit_every`` (epochs between theta re-optimisations
        and validation checks; None: 10 with full batches, 1 with minibatches); ``patience`` (validation checks
        without improvement before stopping; None: 15 with full batches, with minibatches as many epochs as
        make 150 steps, at least 5); ``threads``
        (torch's CPU threads during the fit, restored after; default 1, None: torch's setting); ``device`` ("cpu",
        "cuda", ...; None: CUDA where available, else the CPU);
        ``orthogonalize`` (project f off the fixed design, else only centre it); ``intervals``:
        ``"conditional"`` (Wald / BLUP intervals treating f as known, labelled ``conditional_on_f``),
        ``"bootstrap"`` (cluster bootstrap over the top-level groups, ``bootstrap_draws`` refits with the epochs
        chosen here; ``bootstrap_ci`` basic / percentile / normal), ``"none"``; see
        :func:`hiercompare.backends.learners.finish_table`."""
        if options:
            raise TypeError(f"unknown torch options {sorted(options)}")
        intervals = check_intervals(intervals, bootstrap_draws, bootstrap_ci)
        method = _check_common(md, method, hidden, epochs, lr, weight_decay, validation_fraction, FAMILIES)
        bs = _batch_size(batch_size, md.n)
        refit_every = int(refit_every) if refit_every is not None else (10 if bs is None else 1)
        if patience is None:  # minibatches: the full batch's 15 x 10 steps of patience, and at least 5 epochs
            patience = 15 if bs is None else max(5, math.ceil(150 * bs / md.n))
        patience = int(patience)
        if refit_every < 1 or patience < 1:
            raise SpecError("refit_every and patience must be >= 1")
        if threads is not None and int(threads) < 1:
            raise SpecError(f"threads must be None or >= 1, got {threads!r}")
        feats = _features(md, features)
        seed_used = 0 if seed is None else int(seed)
        device = _device(device)
        cfg = dict(hidden=tuple(int(h) for h in hidden), lr=float(lr), weight_decay=float(weight_decay),
                   method=method, refit_every=refit_every, patience=patience, device=device, batch_size=bs)
        notes = ["torch (LMMNN-style): fixed effects, SDs, BLUPs and the log-likelihood are conditional on the "
                 "learned f(x); its estimation uncertainty is not propagated (intervals='bootstrap' propagates it)"]
        curve: list[tuple[int, float]] = []

        def validate(mask):
            tr, va = np.flatnonzero(~mask), np.flatnonzero(mask)
            md_tr = subset(md, tr)  # DataError (e.g. a categorical level only in the validation rows): skipped
            val = _ValidationSet(md_tr, md.data.loc[va].reset_index(drop=True), md.y[va], feats,
                                 offset=md.offset[va],
                                 trials=md.trials[va] if md.trials is not None else None)
            with _seeded(seed_used), _threads(threads):
                curve[:] = _train_lmmnn(md_tr, feats, int(epochs), cfg, val=val)[2]
            return min(curve, key=lambda t: (t[1], t[0]))[0]

        def refit(n):
            with _seeded(seed_used), _threads(threads):
                return _train_lmmnn(md, feats, n, cfg, val=None)

        (fn, re, _), chosen, skipped = validate_then_refit(md, validation_fraction, seed_used, int(epochs), "epochs",
                                                           validate, refit)
        notes += [skipped] if skipped else []
        notes.append(fn.center(bool(orthogonalize)))
        f_all = fn(md.data)  # the centred f(x) on every row (the network evaluated once)
        res = re.update(f_all, optimise=True, final=True)
        gaussian = md.spec.family == "gaussian"
        stopped_early = bool(curve) and curve[-1][0] < int(epochs)
        diagnostics = {
            "converged": bool(res.converged), "singular": bool(res.singular), "warnings": [],
            "notes": notes + ["converged: the variance components' optimiser at the learned f(x) (training "
                              "itself stops by early stopping, not by a convergence criterion)"],
            "loglik_note": "marginal log-likelihood at the final offset f(x), conditional on the learned f"
                           + ("" if gaussian else " (Laplace approximation, as glmer's)"),
            "epochs_chosen": chosen, "epochs_max": int(epochs), "stopped_early": stopped_early,
            "validation": _curve_summary(curve, validation_fraction),
            "device": str(device), "seed_used": seed_used, "features": list(feats),
            "hidden": list(cfg["hidden"]), "theta": res.theta.tolist(),
            "batch_size": bs, "refit_every": refit_every, "patience": patience, "threads": threads,
            "optimizer": res.optimizer,
        }
        eta = f_all + re.linear_part(res) + re.base
        if gaussian:
            diagnostics["training_rmse"] = float(np.sqrt(np.mean((md.y - eta) ** 2)))
        else:
            diagnostics["training_deviance"] = re.held_out_loss(eta, md.y, trials=md.trials)

        def refit_b(md_b, seed_b):  # the bootstrap's refit: same options, the epochs chosen here, no validation
            return self.fit(md_b, hidden=hidden, epochs=max(int(chosen), 1), lr=lr, weight_decay=weight_decay,
                            method=method, seed=seed_b, features=feats, validation_fraction=0.0,
                            refit_every=refit_every, patience=patience, orthogonalize=orthogonalize, batch_size=bs,
                            threads=threads, device=str(device),
                            intervals="none").table

        table, interval_notes, interval_diag, extras = finish_table(tidy_rows(md, res), intervals, md, refit_b,
                                                                    bootstrap_draws, seed_used, bootstrap_ci)
        diagnostics["notes"] = interval_notes + diagnostics["notes"]
        diagnostics.update(interval_diag)
        return Fit(backend=self.name, spec=md.spec, table=table, model=md, loglik=res.loglik,
                   method=method if gaussian else "ML (Laplace)", nobs=md.n, diagnostics=diagnostics, raw=res,
                   nonlinear=fn, extras=extras)


#: ``batch_size="auto"``: full batch up to this many rows, minibatches of :data:`AUTO_BATCH` rows above
AUTO_FULL_BATCH_ROWS = 20_000
AUTO_BATCH = 8192


def _batch_size(batch_size, n: int) -> int | None:
    """The rows per step: None for full batch. Decided once from the fitting rows ``n`` (so the validation run
    on a subset and the refit on all rows train alike)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise SpecError(f"batch_size must be 'auto', None (full batch) or a positive int, got {batch_size!r}")
        return None if n <= AUTO_FULL_BATCH_ROWS else AUTO_BATCH
    if int(batch_size) < 1:
        raise SpecError(f"batch_size must be 'auto', None (full batch) or a positive int, got {batch_size!r}")
    return None if int(batch_size) >= n else int(batch_size)


class _ValidationSet:
    """Held-out rows of known groups, with their design against the training ModelData."""

    def __init__(self, md_tr: ModelData, data: pd.DataFrame, y: np.ndarray, feats, offset=None, trials=None):
        self.F = feature_matrix(md_tr, data, feats)
        self.X = md_tr.fixed_matrix(data)
        self.y = y
        self.offset = np.zeros(len(y)) if offset is None else np.asarray(offset, dtype=float)
        self.trials = trials
        self.Z, self.codes = [], []
        for lv in md_tr.hierarchy.levels:
            codes = lv.codes_for(data)
            if (codes < 0).any():  # cannot happen with group_aware_split, but never index with -1
                raise DataError(f"validation rows of unseen {lv.group} groups")
            self.codes.append(codes)
            self.Z.append(md_tr.z_matrix(lv.group, data))

    def linear_part(self, res) -> np.ndarray:
        """X beta + Z b + the formula's offset for the held-out rows."""
        out = self.X @ res.beta + self.offset
        for li, (Z, codes) in enumerate(zip(self.Z, self.codes)):
            out = out + np.einsum("nk,nk->n", Z, res.blups[li][codes])
        return out


def _train_lmmnn(md: ModelData, feats, n_epochs: int, cfg: dict, val: _ValidationSet | None):
    """Joint training of f and theta on ``md``; with ``val``, validation MSE after every theta refit and early
    stopping. Returns (NeuralF on CPU, RandomEffects, curve [(epoch, val_mse)]).

    ``cfg["batch_size"]`` None: one full-batch step per epoch (the step's target computed at the current f).
    An int: an epoch is one pass over the rows in shuffled minibatches of about that size, all fitting the
    target computed at the epoch's start (backfitting: the random effects follow f once per pass)."""
    import torch

    device = cfg["device"]
    F = feature_matrix(md, md.data, feats)
    scaler = _Scaler(F)
    gaussian = md.spec.family == "gaussian"
    y_scale = (float(np.std(md.y)) or 1.0) if gaussian else 1.0  # a GLMM's f is on the link scale
    net = _mlp(F.shape[1], cfg["hidden"], zero_last=True).to(device=device, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    Ft = torch.as_tensor(scaler(F), dtype=torch.float32, device=device)
    Fv = None if val is None else torch.as_tensor(scaler(val.F), dtype=torch.float32, device=device)
    re = random_effects(md, method=cfg["method"])
    bs = cfg.get("batch_size")
    n_batches = 1 if bs is None else max(1, -(-md.n // int(bs)))  # ceil: batches of equal size within 1 row
    curve: list[tuple[int, float]] = []
    best, since = math.inf, 0
    for ep in range(n_epochs + 1):
        if n_batches == 1:  # full batch: this forward pass is also the step's (its graph is kept)
            g = net(Ft)[:, 0] * y_scale
            offset = g.detach().cpu().numpy().astype(np.float64)
        else:
            with torch.no_grad():
                offset = (net(Ft)[:, 0] * y_scale).cpu().numpy().astype(np.float64)
        refit = ep % cfg["refit_every"] == 0 or ep == n_epochs
        res = re.update(offset, optimise=refit)
        if val is not None and refit:
            with torch.no_grad():
                gv = net(Fv)[:, 0].cpu().numpy().astype(np.float64) * y_scale
            if gaussian:
                mse = float(np.mean((val.y - gv - val.linear_part(res)) ** 2))
            else:
                mse = re.held_out_loss(gv + val.linear_part(res), val.y, trials=val.trials)
            curve.append((ep, mse))
            if mse < best - 1e-12:
                best, since = mse, 0
            else:
                since += 1
                if since >= cfg["patience"]:
                    break
        if ep == n_epochs:
            break
        target, weight = re.newton_target(offset)
        target = torch.as_tensor(target, dtype=torch.float32, device=device)
        # the Gaussian weights are all 1: multiplying by them is exact, so they are left out
        weight = None if gaussian else torch.as_tensor(weight, dtype=torch.float32, device=device)
        if n_batches == 1:
            batches = [(g, target, weight)]
        else:
            # the permutation is drawn on the CPU (torch's seeded generator) whatever the device
            perm = torch.randperm(md.n).to(device)
            bounds = np.linspace(0, md.n, n_batches + 1).round().astype(int)
            # each batch gathers its own rows (the same values as slicing a permuted copy, without the copy)
            batches = ((net(Ft[idx])[:, 0] * y_scale, target[idx], None if weight is None else weight[idx])
                       for idx in (perm[a:b] for a, b in zip(bounds[:-1], bounds[1:])))
        for gb, tb, wb in batches:
            sq = (tb - gb) ** 2
            loss = 0.5 * torch.mean(sq if wb is None else wb * sq)
            opt.zero_grad()
            loss.backward()
            opt.step()
    fn = NeuralF(md, net, feats, scaler, y_scale)
    return fn, re, curve


def _curve_summary(curve, validation_fraction) -> dict:
    if not curve:
        return {"used": False, "fraction": float(validation_fraction)}
    eps = [e for e, _ in curve]
    mses = [m for _, m in curve]
    i = int(np.argmin(mses))
    return {"used": True, "fraction": float(validation_fraction), "metric": "MSE of f + X beta + Z b on held-out "
            "rows of known groups (random effects refitted on the training rows)",
            "epochs": eps, "mse": mses, "best_epoch": eps[i], "best_mse": mses[i], "mse_epoch0": mses[0],
            "last_epoch": eps[-1], "mse_last": mses[-1]}


# ---------------------------------------------------------------------------------------------- torch-embed
class TorchEmbedBackend(Backend):
    name = "torch-embed"
    families = ("gaussian",)
    requires = ("torch",)
    install_hint = INSTALL_HINT
    takes_seed = True
    description = ("BASELINE (the seed's naive approach): MLP on features + a learned embedding per group, MSE "
                   "only; no variance components, no shrinkage; group deviations by embedding replacement")


    def versions(self):
        import torch

        return {"torch": torch.__version__}

    def fit(self, md: ModelData, hidden=(64, 64), epochs: int = 1500, lr: float = 0.01,
            weight_decay: float = 1e-4, seed: int | None = None, features=None, validation_fraction: float = 0.2,
            embedding_dim: int = 4, eval_every: int = 10, patience: int = 15, method=None, **options) -> Fit:
        """Options: ``hidden``, ``epochs`` (maximum), ``lr``, ``weight_decay`` (MLP weights only; embeddings
        are not penalised), ``seed`` (None -> 0), ``features``, ``validation_fraction`` (0: train ``epochs``),
        ``embedding_dim`` per level, ``eval_every`` and ``patience`` (validation checks). ``method`` is
        accepted and ignored (MSE training, no likelihood)."""
        if options:
            raise TypeError(f"unknown torch-embed options {sorted(options)}")
        _check_common(md, "REML", hidden, epochs, lr, weight_decay, validation_fraction)
        if int(embedding_dim) < 1 or int(eval_every) < 1 or int(patience) < 1:
            raise SpecError("embedding_dim, eval_every and patience must be >= 1")
        feats = _features(md, features)
        seed_used = 0 if seed is None else int(seed)
        device = _device()
        cfg = dict(hidden=tuple(int(h) for h in hidden), lr=float(lr), weight_decay=float(weight_decay),
                   dim=int(embedding_dim), eval_every=int(eval_every), patience=int(patience), device=device)
        notes = [
            "BASELINE: the seed conversation's naive network (features + one learned embedding per group, MSE); "
            "no variance components are estimated and group effects are not shrunk",
            "group deviation of a level-l group = mean over its training rows of [network output with its own "
            "embedding] - [output with the mean embedding of its siblings], levels below at the mean embedding of "
            "its descendants; population part = output with every level at its mean embedding",
            "predict() = population part + group deviations (additive approximation of the network; exact on "
            "average over every top-level group's training rows)",
            "varying slopes are not represented: only (Intercept) deviations are reported",
            "ran_pars holds only the residual SD (training RMSE); diagnostics['deviation_sd'] is the empirical SD "
            "of the reported deviations, not an estimated variance component",
        ]
        cats = [v for v in md.spec.fixed_variables if v in md.categories]
        if cats:
            notes.append(f"categorical fixed terms {cats} are not inputs of the network (their coefficients are "
                         "the projection of the population part, about 0)")
        curve: list[tuple[int, float]] = []

        def validate(mask):
            with _seeded(seed_used):
                curve[:] = _train_embed(md, feats, int(epochs), cfg, train_rows=np.flatnonzero(~mask),
                                        val_rows=np.flatnonzero(mask))[1]
            return min(curve, key=lambda t: (t[1], t[0]))[0]

        def refit(n):
            with _seeded(seed_used):
                return _train_embed(md, feats, n, cfg, train_rows=np.arange(md.n), val_rows=None)[0]

        model, chosen, skipped = validate_then_refit(md, validation_fraction, seed_used, int(epochs), "epochs",
                                                     validate, refit)
        notes += [skipped] if skipped else []
        parts = model.decomposition()
        pop = _EmbedPopulation(model)
        h0 = parts["population"]
        beta = np.linalg.lstsq(md.X, h0, rcond=None)[0] if md.X.shape[1] else np.zeros(0)
        pop.coef = beta
        rows = [dict(effect="fixed", term=n, estimate=b) for n, b in zip(md.fixed_names, beta)]
        pred = h0.copy()
        dev_sd = {}
        for li, lv in enumerate(md.hierarchy.levels):
            d = parts["deviations"][li]
            pred = pred + d[lv.codes]
            dev_sd[lv.group] = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
        rmse = float(np.sqrt(np.mean((md.y - pred) ** 2)))
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=rmse))
        for li, lv in enumerate(md.hierarchy.levels):
            for g, lab in enumerate(lv.labels):
                rows.append(dict(effect="ran_vals", group=lv.group, level=lab, term=INTERCEPT,
                                 estimate=parts["deviations"][li][g]))
        net_pred = parts["network"]
        diagnostics = {
            "converged": None, "singular": False, "warnings": [], "baseline": True,
            "label": "BASELINE: naive embedding network (no variance components, no shrinkage)",
            "notes": notes + ["converged: not assessed (a baseline: epochs chosen by early stopping, no optimiser "
                              "with a convergence criterion)"],
            "deviation_sd": dev_sd,
            "deviation_sd_note": "empirical SD of the reported deviations per level (not an estimated variance "
                                 "component)",
            "residual_sd_note": "RMSE of predict() on the training rows",
            "network_rmse": float(np.sqrt(np.mean((md.y - net_pred) ** 2))),
            "additive_rmse_vs_network": float(np.sqrt(np.mean((pred - net_pred) ** 2))),
            "epochs_chosen": chosen, "epochs_max": int(epochs),
            "validation": _curve_summary(curve, validation_fraction) | (
                {"metric": "MSE of the network's prediction on held-out rows of known groups"} if curve else {}),
            "device": str(device), "seed_used": seed_used, "features": list(feats), "hidden": list(cfg["hidden"]),
            "embedding_dim": cfg["dim"],
        }
        return Fit(backend=self.name, spec=md.spec, table=tidy_frame(rows), model=md, loglik=None, method="MSE",
                   nobs=md.n, diagnostics=diagnostics, raw=model, nonlinear=pop)


class _EmbedNet:
    """The trained embedding network (on the CPU, float64) and its decomposition."""

    def __init__(self, md: ModelData, mlp, embeddings, feats, scaler, y_mean, y_scale):
        self.md = md
        self.mlp = mlp.to("cpu").float().eval()
        self.emb = [e.detach().to("cpu").float() for e in embeddings]  # per level (G_l, dim)
        self.feats = tuple(feats)
        self.scaler = scaler
        self.y_mean, self.y_scale = float(y_mean), float(y_scale)

    def output(self, F: np.ndarray, E: list) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.as_tensor(self.scaler(F), dtype=torch.float32)
            h = self.mlp(torch.cat([x] + list(E), dim=1))[:, 0].numpy().astype(np.float64)
        return self.y_mean + self.y_scale * h

    def population_embeddings(self, n: int) -> list:
        return [e.mean(dim=0, keepdim=True).expand(n, -1) for e in self.emb]

    def decomposition(self) -> dict:
        """Telescoping replacement of embeddings on the fitting rows (see the module docstring)."""
        import torch

        md = self.md
        levels = md.hierarchy.levels
        L = len(levels)
        F = feature_matrix(md, md.data, self.feats)
        n = md.n
        codes = [lv.codes for lv in levels]
        stages = []
        for stage in range(L + 1):
            E = []
            for j in range(L):
                if j < stage:
                    E.append(self.emb[j][codes[j]])
                elif stage == 0:
                    E.append(self.emb[j].mean(dim=0, keepdim=True).expand(n, -1))
                else:
                    # mean embedding of the level-j descendants of the row's level-(stage-1) group
                    anc = _ancestor_at(md, j, stage - 1)  # level-j group -> its level-(stage-1) ancestor
                    G = levels[stage - 1].n_groups
                    cnt = np.bincount(anc, minlength=G).astype(float)
                    sums = torch.zeros((G, self.emb[j].shape[1]), dtype=torch.float32)
                    sums.index_add_(0, torch.as_tensor(anc), self.emb[j])
                    means = sums / torch.as_tensor(np.maximum(cnt, 1.0), dtype=torch.float32)[:, None]
                    E.append(means[codes[stage - 1]])
            stages.append(self.output(F, E))
        devs = []
        for li, lv in enumerate(levels):
            diff = stages[li + 1] - stages[li]
            cnt = np.bincount(lv.codes, minlength=lv.n_groups)
            devs.append(np.bincount(lv.codes, weights=diff, minlength=lv.n_groups) / np.maximum(cnt, 1))
        return {"population": stages[0], "network": stages[-1], "deviations": devs}


def _ancestor_at(md: ModelData, level: int, up_to: int) -> np.ndarray:
    """For every group of ``level`` (0-based), the index of its ancestor at level ``up_to`` (<= level)."""
    levels = md.hierarchy.levels
    cur = np.arange(levels[level].n_groups)
    for i in range(level, up_to, -1):
        cur = levels[i].parent[cur]
    return cur


class _EmbedPopulation:
    """``Fit.nonlinear`` of torch-embed: the population part h_0(x) minus its projection on the fixed design."""

    def __init__(self, model: _EmbedNet):
        self.model = model
        self.coef = np.zeros(model.md.X.shape[1])

    def __call__(self, data: pd.DataFrame) -> np.ndarray:
        md = self.model.md
        F = feature_matrix(md, data, self.model.feats)
        h0 = self.model.output(F, self.model.population_embeddings(len(F)))
        X = md.X if data is md.data else md.fixed_matrix(data)
        return h0 - X @ self.coef


def _train_embed(md: ModelData, feats, n_epochs: int, cfg: dict, train_rows, val_rows):
    """Full-batch MSE training of the embedding network on ``train_rows``; with ``val_rows``, validation MSE
    every ``eval_every`` epochs and early stopping. Returns (_EmbedNet, curve)."""
    import torch
    from torch import nn

    device = cfg["device"]
    levels = md.hierarchy.levels
    F_all = feature_matrix(md, md.data, feats)
    Ftr = F_all[train_rows]
    scaler = _Scaler(Ftr)
    y = md.y
    y_mean, y_scale = float(y[train_rows].mean()), float(y[train_rows].std()) or 1.0
    mlp = _mlp(F_all.shape[1] + cfg["dim"] * len(levels), cfg["hidden"], zero_last=False)
    emb = nn.ModuleList(nn.Embedding(lv.n_groups, cfg["dim"]) for lv in levels)
    with torch.no_grad():
        for e in emb:
            e.weight.mul_(0.1)
    mlp = mlp.to(device=device, dtype=torch.float32)
    emb = emb.to(device=device, dtype=torch.float32)
    opt = torch.optim.AdamW([{"params": mlp.parameters(), "weight_decay": cfg["weight_decay"]},
                             {"params": emb.parameters(), "weight_decay": 0.0}], lr=cfg["lr"])

    def tensors(rows):
        x = torch.as_tensor(scaler(F_all[rows]), dtype=torch.float32, device=device)
        c = [torch.as_tensor(lv.codes[rows], dtype=torch.long, device=device) for lv in levels]
        t = torch.as_tensor((y[rows] - y_mean) / y_scale, dtype=torch.float32, device=device)
        return x, c, t

    def forward(x, c):
        return mlp(torch.cat([x] + [e(ci) for e, ci in zip(emb, c)], dim=1))[:, 0]

    xt, ct, tt = tensors(train_rows)
    val = None if val_rows is None else tensors(val_rows)
    curve: list[tuple[int, float]] = []
    best, since = math.inf, 0
    for ep in range(n_epochs + 1):
        if val is not None and (ep % cfg["eval_every"] == 0 or ep == n_epochs):
            with torch.no_grad():
                mse = float(torch.mean((forward(val[0], val[1]) - val[2]) ** 2)) * y_scale ** 2
            curve.append((ep, mse))
            if mse < best - 1e-12:
                best, since = mse, 0
            else:
                since += 1
                if since >= cfg["patience"]:
                    break
        if ep == n_epochs:
            break
        loss = torch.mean((forward(xt, ct) - tt) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = _EmbedNet(md, mlp, [e.weight for e in emb], feats, scaler, y_mean, y_scale)
    return model, curve


__all__ = ["TorchBackend", "TorchEmbedBackend", "NeuralF"]
