import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import DataError, NestingError, SpecError
from hiercompare.design import prepare
from hiercompare.hierarchy import Hierarchy


def _tree(n_markets=3, n_sub=2, n=4, unique=False):
    rows = []
    for m in range(n_markets):
        for s in range(n_sub):
            for i in range(n):
                sub = f"M{m}_S{s}" if unique else f"Sub{s}"
                rows.append({"market": f"Market_{m}", "submarket": sub, "y": float(m + s + i), "x1": float(i)})
    return pd.DataFrame(rows)


def test_levels_codes_and_parent_maps():
    df = _tree()
    spec = hc.ModelSpec.from_formula("y ~ x1 + (1 | market) + (1 | market:submarket)")
    h = Hierarchy.build(spec, df)
    assert h.root == "(all)"  # nothing in a user's data names the root
    assert Hierarchy.build(spec, df, root="Scotland").root == "Scotland"
    assert hc.Scenario().root == "United_state"  # the seed's simulated tree keeps its national root
    assert h.groups == ("market", "market:submarket")
    top, sub = h.levels
    assert list(top.labels) == ["Market_0", "Market_1", "Market_2"]
    assert list(sub.labels) == [f"Market_{m}:Sub{s}" for m in range(3) for s in range(2)]
    assert list(sub.parent) == [0, 0, 1, 1, 2, 2]
    assert list(top.parent) == [0, 0, 0]
    assert top.counts().tolist() == [8, 8, 8]
    # codes reproduce the labels row by row
    assert all(sub.labels[sub.codes] == df["market"] + ":" + df["submarket"])
    new = pd.DataFrame({"market": ["Market_1", "Market_9"], "submarket": ["Sub1", "Sub0"]})
    assert sub.codes_for(new).tolist() == [3, -1]


def test_nested_shorthand_equals_interaction():
    df = _tree()
    a = Hierarchy.build(hc.ModelSpec.from_formula("y ~ (1 | market/submarket)"), df)
    b = Hierarchy.build(hc.ModelSpec.from_formula("y ~ (1 | market) + (1 | market:submarket)"), df)
    assert a.groups == b.groups
    assert [list(lv.labels) for lv in a.levels] == [list(lv.labels) for lv in b.levels]


def test_repeated_labels_under_bare_factor_are_flagged():
    df = _tree()  # Sub0, Sub1 repeat in every market
    spec = hc.ModelSpec.from_formula("y ~ x1 + (1 | market) + (1 | submarket)")
    with pytest.raises(NestingError) as err:
        Hierarchy.build(spec, df)
    msg = str(err.value)
    assert "submarket is not nested in market" in msg
    assert "'Sub0' appears under market 'Market_0', 'Market_1', 'Market_2'" in msg
    assert "(1 | market:submarket)" in msg and "market/submarket" in msg
    assert "crossed" in msg  # every label is shared


def test_one_misfiled_label_is_named():
    df = _tree(unique=True)
    df.loc[0, "submarket"] = "M1_S0"  # a row of M1_S0 filed under Market_0
    spec = hc.ModelSpec.from_formula("y ~ x1 + (1 | market) + (1 | submarket)")
    with pytest.raises(NestingError, match=r"1 of 6 submarket labels .*'M1_S0' appears under market 'Market_0', 'Market_1'"):
        Hierarchy.build(spec, df)


def test_unique_labels_bare_factor_ok():
    df = _tree(unique=True)
    h = Hierarchy.build(hc.ModelSpec.from_formula("y ~ (1 | market) + (1 | submarket)"), df)
    assert h.groups == ("market", "submarket")
    assert h.levels[1].parent.tolist() == [0, 0, 1, 1, 2, 2]


def test_single_group_is_an_error():
    df = _tree(n_markets=1)
    with pytest.raises(DataError, match="grouping factor market has a single level .*'Market_0'"):
        Hierarchy.build(hc.ModelSpec.from_formula("y ~ (1 | market)"), df)


def test_crossed_factors_in_data():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.normal(size=40), "a": np.repeat(list("ABCD"), 10), "b": np.tile(list("pqrst"), 8)})
    with pytest.raises(SpecError, match="crossed, not nested"):  # a CrossedFactorsError: both SpecError and DataError
        Hierarchy.build(hc.ModelSpec.from_formula("y ~ (1 | a) + (1 | b)"), df)


def test_crossed_factors_in_spec():
    with pytest.raises(SpecError, match="crossed"):
        hc.ModelSpec.from_formula("y ~ (1 | a:b) + (1 | a:c)")


def test_three_levels_any_depth():
    sc = hc.Scenario(levels=(
        hc.LevelScenario("region", 3, {"(Intercept)": 1.0}, label="R{i}"),
        hc.LevelScenario("market", 2, {"(Intercept)": 0.5}, label="M{i}"),
        hc.LevelScenario("submarket", 2, {"(Intercept)": 0.3}, label="S{i}"),
    ), n_obs=5)
    data, _ = hc.simulate(sc, seed=3)
    md = prepare(hc.ModelSpec.from_formula(sc.formula()), data)
    h = md.hierarchy
    assert h.groups == ("region", "region:market", "region:market:submarket")
    assert [lv.n_groups for lv in h.levels] == [3, 6, 12]
    anc = h.ancestors(2)
    assert anc[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert anc[1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
