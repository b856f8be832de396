"""Issue 4's comparison on the nonlinear scenario, over several seeds (recorded in ml_nonlinear.csv / .md).

For each seed: simulate Scenario(nonlinear="sin_threshold"); hold out 20% of the rows of every leaf group;
fit every available backend among native (linear f), lightgbm, torch, and the naive baselines lightgbm-cat and
torch-embed, plus the oracle (mixedcore with the TRUE f as offset); report held-out RMSE and the variance
components. Run: .venv/bin/python validation/ml_nonlinear.py [n_seeds]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

import hiercompare as hc
from hiercompare.report import markdown_table
from hiercompare import mixedcore
from hiercompare.backends.learners import group_aware_split
from hiercompare.design import prepare
from hiercompare.simulate import nonlinear_part

BACKENDS = ["native", "lightgbm", "torch", "lightgbm-cat", "torch-embed"]


def one(seed: int) -> list[dict]:
    sc = hc.Scenario(nonlinear="sin_threshold", name="nonlinear")
    f = sc.formula()
    data, _ = hc.simulate(sc, seed=seed)
    md = prepare(hc.ModelSpec.from_formula(f), data)
    test = group_aware_split(md, 0.2, seed=1000 + seed)
    train, held = data[~test].reset_index(drop=True), data[test].reset_index(drop=True)
    rows = []
    mdt = prepare(hc.ModelSpec.from_formula(f), train)
    orc = mixedcore.from_model_data(mdt, offset=nonlinear_part(sc, train)).fit()
    pred = mdt.fixed_matrix(held) @ orc.beta + nonlinear_part(sc, held)
    for li, lv in enumerate(mdt.hierarchy.levels):
        codes = lv.codes_for(held)
        pred = pred + np.einsum("nk,nk->n", mdt.z_matrix(lv.group, held), orc.blups[li][codes])
    rows.append({"seed": seed, "backend": "oracle (true f)", "heldout_rmse": np.sqrt(np.mean((held["y"] - pred) ** 2)),
                 "sd_market_int": np.sqrt(orc.cov[0][0, 0]), "sd_market_x1": np.sqrt(orc.cov[0][1, 1]),
                 "sd_submarket": np.sqrt(orc.cov[1][0, 0]), "sd_residual": orc.sigma, "seconds": np.nan})
    for b in BACKENDS:
        if b not in hc.available_backends():
            continue
        fit = hc.fit(train, f, backend=b, seed=seed)
        v = fit.varcorr.set_index(["group", "term"])["estimate"]
        rows.append({"seed": seed, "backend": b,
                     "heldout_rmse": float(np.sqrt(np.mean((held["y"] - fit.predict(held)) ** 2))),
                     "sd_market_int": v.get(("market", "sd__(Intercept)"), np.nan),
                     "sd_market_x1": v.get(("market", "sd__x1"), np.nan),
                     "sd_submarket": v.get(("market:submarket", "sd__(Intercept)"), np.nan),
                     "sd_residual": v.get(("Residual", "sd__Observation"), np.nan),
                     "seconds": fit.timing["fit_seconds"]})
    return rows


def main(n_seeds: int = 5) -> pd.DataFrame:
    rows = [r for s in range(1, n_seeds + 1) for r in one(s)]
    df = pd.DataFrame(rows)
    out = Path(__file__).parent
    df.to_csv(out / "ml_nonlinear.csv", index=False)
    summary = df.groupby("backend", sort=False).agg(["mean", "std"]).drop(columns="seed")
    (out / "ml_nonlinear.md").write_text(
        f"# Nonlinear scenario, {n_seeds} seeds (mean and SD over seeds)\n\n" + markdown_table(summary.round(4).reset_index()) + "\n")
    print(summary.round(4).to_string())
    return df


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
