"""Full simulation-based calibration run of the pymc backend (recorded in sbc_pymc.csv / .png / .md).

Run: .venv/bin/python validation/sbc_pymc.py [n_sims]   (default 200)
"""
from __future__ import annotations

import sys
from pathlib import Path

import hiercompare as hc
from hiercompare.design import prepare
from hiercompare.priors import Priors
from hiercompare.sbc import sbc


def main(n_sims: int = 200) -> None:
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 6, {"(Intercept)": 0.5, "x1": 0.3}, ((1, 0.3), (0.3, 1)),
                                              label="M{i}"),
                             hc.LevelScenario("submarket", 3, {"(Intercept)": 0.3}, label="S{i}")), n_obs=8)
    data, _ = hc.simulate(sc, seed=1)
    md = prepare(hc.ModelSpec.from_formula(sc.formula()), data)
    pri = Priors(intercept=("normal", 0.0, 1.0), b={"x1": ("normal", 0.0, 1.0), "x2": ("normal", 0.0, 1.0)},
                 sd=("student_t", 3.0, 0.0, 0.5), sigma=("student_t", 3.0, 0.0, 0.5), cor=("lkj", 2.0))
    res = sbc(md, pri, n_sims=n_sims, draws=500, tune=500, thin=5, seed=2026,
              progress=lambda m: print(m, file=sys.stderr, flush=True) if m.endswith("0/" + str(n_sims)) or True else None)
    out = Path(__file__).parent
    res.ranks.to_csv(out / "sbc_pymc_ranks.csv", index=False)
    res.diagnostics.to_csv(out / "sbc_pymc_runs.csv", index=False)
    res.ecdf_difference_plot(out / "sbc_pymc_ecdf.png")
    u = res.uniformity(bins=10)
    text = (f"# SBC of the pymc backend: {n_sims} simulations, {res.n_draws} thinned draws each\n\n"
            f"Design: 6 markets x 3 submarkets x 8 rows, formula `{sc.formula()}`; fixed priors (see script).\n\n"
            + _markdown(u.round(4))
            + f"\n\nDivergent transitions over all simulations: {int(res.diagnostics['divergences'].sum())}.\n")
    (out / "sbc_pymc.md").write_text(text)
    print(text)


def _markdown(df) -> str:
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
