"""The pictures of a fit on the user's own data (report.plots): shrinkage, caterpillars, the decomposition, the
hierarchy diagram and the LightGBM tree, each from tidy frames and each with the table behind it.

The data set is lme4's Pastes (hiercompare/data/pastes.csv: strength ~ 1 + (1|batch) + (1|batch:cask), 10 batches of
3 casks of 2 rows), fitted by native (partial pooling) and ols (no pooling). The edge cases the report must
survive: one level only, a varying slope, a backend missing, a group with one row, and a tree too large to draw.
"""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.hierarchy import factor_labels
from hiercompare.report import plots, render_demo

DATA = Path(__file__).parent / "data"

PASTES = "strength ~ 1 + (1|batch) + (1|batch:cask)"
GROUPS = ("batch", "batch:cask")


def _png(b64: str) -> tuple[int, int]:
    """Width and height of a base64 PNG (fails if it is not one)."""
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", raw[16:24])
    assert w > 100 and h > 100
    return w, h


def _fits(data: pd.DataFrame, formula: str, backends=("native", "ols")) -> dict:
    return {b: hc.fit(data, formula, backend=b) for b in backends}


def _tidy(fits: dict) -> pd.DataFrame:
    return pd.concat([f.tidy() for f in fits.values()], ignore_index=True)


@pytest.fixture(scope="module")
def pastes():
    data = hc.datasets.load("pastes")
    fits = _fits(data, PASTES)
    return dict(data=data, fits=fits, tidy=_tidy(fits))


def _ranef(fit, group: str, term: str = "(Intercept)") -> pd.Series:
    return fit.ranef(group)[term].rename(index=str)


# ---------------------------------------------------------------------------------------------- shrinkage
def test_group_sizes_join_the_fits_labels(pastes):
    for g, n in zip(GROUPS, (6, 2)):
        s = plots.group_sizes(pastes["data"], g)
        assert set(s.index) == set(_ranef(pastes["fits"]["native"], g).index)
        assert (s == n).all() and s.sum() == len(pastes["data"])
    with pytest.raises(KeyError, match="nowhere"):
        plots.group_sizes(pastes["data"], "batch:nowhere")


@pytest.mark.parametrize("group", GROUPS)
def test_shrinkage_table_is_ols_against_native(pastes, group):
    t = plots.shrinkage_table(pastes["tidy"], plots.group_sizes(pastes["data"], group), group)
    assert list(t.columns) == plots.SHRINKAGE_COLUMNS
    ols, native = _ranef(pastes["fits"]["ols"], group), _ranef(pastes["fits"]["native"], group)
    assert len(t) == len(native) == len(ols)
    t = t.set_index("level")
    np.testing.assert_allclose(t["no_pooling"], ols.reindex(t.index), rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["partial_pooling"], native.reindex(t.index), rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["shrinkage"], t["partial_pooling"] - t["no_pooling"], rtol=0, atol=1e-15)
    assert (t["n"] == (6 if group == "batch" else 2)).all()
    assert set(t["no_pooling_backend"]) == {"ols"} and set(t["partial_pooling_backend"]) == {"native"}
    _png(plots.shrinkage_plot(t.reset_index(), title=f"{group}: shrinkage"))


def test_shrinkage_pulls_the_batch_deviations_in(pastes):
    """Partial pooling shrinks: the batch BLUPs spread less than the no-pooling deviations."""
    t = plots.shrinkage_table(pastes["tidy"], plots.group_sizes(pastes["data"], "batch"), "batch")
    assert t["partial_pooling"].std() < t["no_pooling"].std()


def test_shrinkage_with_a_backend_missing(pastes):
    only_native = pastes["fits"]["native"].tidy()
    t = plots.shrinkage_table(only_native, None, "batch")
    assert t.empty and list(t.columns) == plots.SHRINKAGE_COLUMNS
    assert plots.shrinkage_plot(t) == ""
    assert plots.shrinkage_table(pastes["tidy"], None, "batch", partial_pooling="lme4").empty
    assert plots.shrinkage_table(pastes["tidy"], None, "batch", term="x1").empty  # a term nobody varies
    t = plots.shrinkage_table(pastes["tidy"], None, "batch")  # no sizes: ranked along x instead
    assert t["n"].isna().all()
    _png(plots.shrinkage_plot(t))


# ---------------------------------------------------------------------------------------------- caterpillar
@pytest.mark.parametrize("group", GROUPS)
def test_caterpillar_table(pastes, group):
    t = plots.caterpillar_table(pastes["tidy"], group)
    assert list(t.columns) == plots.CATERPILLAR_COLUMNS
    assert list(dict.fromkeys(t["backend"])) == ["native", "ols"]
    native = t[t["backend"] == "native"].set_index("level")
    ref = pastes["fits"]["native"].tidy("ran_vals")
    ref = ref[ref["group"] == group].set_index("level")
    np.testing.assert_allclose(native["estimate"], ref["estimate"].reindex(native.index), rtol=0, atol=1e-12)
    np.testing.assert_allclose(native["conf_low"], ref["conf_low"].reindex(native.index), rtol=0, atol=1e-12)
    # ranked by native's estimates, the same rank in every backend's rows; every group drawn (<= 60)
    assert native.sort_values("rank")["estimate"].is_monotonic_increasing
    ols = t[t["backend"] == "ols"].set_index("level")
    assert (ols["rank"] == native["rank"].reindex(ols.index)).all()
    assert t["shown"].all() and (t["n_levels"] == len(ref)).all()
    _png(plots.caterpillar_plot(t, title=f"{group} deviations"))


def test_caterpillar_hides_the_middle_and_says_how_many(pastes):
    t = plots.caterpillar_table(pastes["tidy"], "batch:cask", max_levels=10)
    native = t[t["backend"] == "native"].sort_values("rank")
    assert native["shown"].sum() == 10 and native["n_levels"].iloc[0] == 30
    assert list(native["shown"]) == [True] * 5 + [False] * 20 + [True] * 5  # the extremes
    _png(plots.caterpillar_plot(t))
    # ordered by ols instead, and a named backend that did not run is left out
    t2 = plots.caterpillar_table(pastes["tidy"], "batch", backends=["lme4", "ols", "native"], order_by="ols")
    assert list(dict.fromkeys(t2["backend"])) == ["ols", "native"]
    assert t2[t2["backend"] == "ols"].sort_values("rank")["estimate"].is_monotonic_increasing
    assert plots.caterpillar_table(pastes["tidy"], "batch", backends=["lme4"]).empty
    assert plots.caterpillar_plot(plots.caterpillar_table(pastes["tidy"], "nowhere")) == ""


def test_caterpillar_plot_takes_raw_rows_and_a_truth(pastes):
    """The study report's call: ran_vals rows of one group and term, plus the drawn truth."""
    rv = pastes["tidy"][(pastes["tidy"]["effect"] == "ran_vals") & (pastes["tidy"]["group"] == "batch")]
    truth = _ranef(pastes["fits"]["native"], "batch") * 0.9
    _png(plots.caterpillar_plot(rv, truth, title="with a truth", max_levels=4))
    _png(plots.caterpillar_plot(rv, title="without"))


# ---------------------------------------------------------------------------------------------- decomposition
def test_decomposition_table_adds_up(pastes):
    f = pastes["fits"]["native"]
    parts = f.decompose()
    labels = pd.Series(factor_labels(pastes["data"], ("batch", "cask")), index=pastes["data"].index)
    t = plots.decomposition_table(parts, labels, n=6)
    assert list(t.columns) == plots.DECOMPOSITION_COLUMNS
    examples = list(dict.fromkeys(t["example"]))
    assert len(examples) == 6 and len(set(examples)) == 6  # one row per distinct cask
    for ex in examples:
        sub = t[t["example"] == ex].set_index("part")
        row = sub["row"].iloc[0]
        assert list(sub.index) == ["national", "batch|(Intercept)", "batch:cask|(Intercept)", "prediction"]
        for part in ("national", "batch|(Intercept)", "batch:cask|(Intercept)"):
            assert sub.loc[part, "value"] == parts.at[row, part]
        assert sub.loc["batch:cask|(Intercept)", "end"] == pytest.approx(parts.at[row, "prediction"], abs=1e-9)
        assert sub.loc["prediction", "value"] == pytest.approx(f.predict()[row], abs=1e-12)
        assert labels[row] == ex
    # spread from the lowest prediction to the highest
    preds = t[t["part"] == "prediction"]["value"].to_numpy()
    assert preds[0] == pytest.approx(parts.groupby(labels)["prediction"].first().min())
    assert preds[-1] == pytest.approx(parts.groupby(labels)["prediction"].first().max())
    _png(plots.decomposition_plot(t, title="native"))
    # chosen rows, no labels; ols decomposes the same way
    t2 = plots.decomposition_table(pastes["fits"]["ols"].decompose(), rows=[0, 0, 7])
    assert list(dict.fromkeys(t2["example"])) == ["row 0", "row 7"] and len(t2) == 8
    with pytest.raises(KeyError, match="999"):
        plots.decomposition_table(parts, rows=[999])
    _png(plots.decomposition_plot(t2))
    with pytest.raises(ValueError, match="prediction"):
        plots.decomposition_table(parts.drop(columns="prediction"))


# ---------------------------------------------------------------------------------------------- hierarchy
def test_hierarchy_inputs_and_table(pastes):
    native = pastes["fits"]["native"]
    root, root_value, levels = plots.hierarchy_inputs(native)
    assert root == native.model.hierarchy.root and root_value == native.fixef["(Intercept)"]
    assert [lv["group"].iloc[0] for lv in levels] == list(GROUPS)
    casks = levels[1].set_index("level")
    assert (casks["parent"] == [lab.split(":")[0] for lab in casks.index]).all() and (casks["n"] == 2).all()
    np.testing.assert_allclose(casks["estimate"], _ranef(native, "batch:cask").reindex(casks.index), atol=1e-12)
    # annotated with ols's deviations on the same tree
    _, ols_root, ols_levels = plots.hierarchy_inputs(native, pastes["fits"]["ols"].tidy())
    assert ols_root == pastes["fits"]["ols"].fixef["(Intercept)"]
    np.testing.assert_allclose(ols_levels[0].set_index("level")["estimate"],
                               _ranef(pastes["fits"]["ols"], "batch").reindex(levels[0]["level"]), atol=1e-12)
    t = plots.hierarchy_table(root, root_value, levels)
    assert list(t.columns) == plots.HIERARCHY_COLUMNS
    assert t["kind"].iloc[0] == "root" and t["estimate"].iloc[0] == root_value
    top = t[(t["depth"] == 1) & (t["kind"] == "group")]
    assert len(top) == 10 and top["estimate"].abs().is_monotonic_decreasing  # largest |offset| first
    drawn = t[(t["depth"] == 2) & (t["kind"] == "group")]
    assert len(drawn) == 9  # the 3 casks of the first 3 batches
    np.testing.assert_allclose(drawn.set_index("level")["estimate"],
                               _ranef(native, "batch:cask").reindex(drawn["level"]), atol=1e-12)
    assert plots.hierarchy_note(t) == "batch: all 10 groups drawn; batch:cask: 9 of 30 groups drawn (21 hidden)"
    w, _ = _png(plots.hierarchy_plot(root, root_value, levels, title="native"))
    assert w <= 1150  # shown unscaled in a report 1,150 px wide: 9 pt text stays ~13 px high
    with pytest.raises(ValueError, match="order"):
        plots.hierarchy_table(root, root_value, levels, order="random")


def _big_tree(n_top=131, n_leaf=2410, seed=1):
    rng = np.random.default_rng(seed)
    tops = [f"LA{i:03d}" for i in range(n_top)]
    parent = np.sort(np.r_[np.arange(n_top), rng.integers(0, n_top, n_leaf - n_top)])
    leaves = [f"{tops[p]}:S{j}" for j, p in enumerate(parent)]
    return [pd.DataFrame({"group": "authority", "level": tops, "estimate": rng.normal(0, 0.3, n_top),
                          "n": rng.integers(50, 900, n_top)}),
            pd.DataFrame({"group": "authority:school", "level": leaves, "estimate": rng.normal(0, 0.5, n_leaf),
                          "n": rng.integers(1, 60, n_leaf)})]


def test_large_tree_says_how_many_groups_are_hidden():
    """2,410 schools in 131 authorities: the top groups are drawn, and the rest are counted."""
    levels = _big_tree()
    t = plots.hierarchy_table("Scotland", 5.1, levels, max_top=15, max_children=5, expand=3)
    note = plots.hierarchy_note(t)
    assert note == ("authority: 15 of 131 groups drawn (116 hidden); "
                    "authority:school: 15 of 2,410 groups drawn (2,395 hidden)")
    hidden = t[t["kind"] == "hidden"]
    assert hidden.loc[hidden["depth"] == 1, "hidden"].tolist() == [116]
    assert "116 more authority groups not drawn" in hidden.loc[hidden["depth"] == 1, "name"].iloc[0]
    kids = levels[1].assign(parent=levels[1]["level"].str.split(":").str[0]).groupby("parent").size()
    for _, r in hidden[hidden["depth"] == 2].iterrows():  # under each expanded authority: its other schools
        assert r["hidden"] == kids[r["parent"]] - 5
    top = t[(t["depth"] == 1) & (t["kind"] == "group")]
    expect = levels[0].reindex(levels[0]["estimate"].abs().sort_values(ascending=False).index)["level"][:15]
    assert list(top["level"]) == list(expect)
    assert (top["children"] == kids.reindex(top["level"]).to_numpy()).all()
    w, h = _png(plots.hierarchy_plot("Scotland", 5.1, levels, title="2,410 schools"))
    assert w <= 1150 and h < 2000
    # order by size; one level of 65 schools
    by_size = plots.hierarchy_table("Scotland", 5.1, levels, order="size")
    assert by_size.loc[(by_size["depth"] == 1) & (by_size["kind"] == "group"), "n"].is_monotonic_decreasing
    one = plots.hierarchy_table("(all)", None, [levels[0].iloc[:65].assign(group="school")])
    assert plots.hierarchy_note(one) == "school: 15 of 65 groups drawn (50 hidden)"
    _png(plots.hierarchy_plot("(all)", None, [levels[0].iloc[:65].assign(group="school")]))


def test_caterpillar_of_a_large_level():
    lv = _big_tree()[1]
    tidy = pd.concat([lv.assign(effect="ran_vals", term="(Intercept)", backend=b, conf_low=lv["estimate"] - 1,
                                conf_high=lv["estimate"] + 1) for b in ("native", "ols")])
    t = plots.caterpillar_table(tidy, "authority:school")
    assert t.groupby("backend")["shown"].sum().tolist() == [60, 60]
    w, _ = _png(plots.caterpillar_plot(t, title="schools"))
    assert w <= 1150


# ---------------------------------------------------------------------------------------------- edge cases
def test_one_level_a_slope_and_a_group_with_one_row(pastes):
    """One grouping level; a varying slope (sleepstudy); a cask with a single row; a label with a dollar."""
    data = pastes["data"]
    one = _fits(data, "strength ~ 1 + (1|batch)")
    tidy = _tidy(one)
    t = plots.shrinkage_table(tidy, plots.group_sizes(data, "batch"), "batch")
    np.testing.assert_allclose(t.set_index("level")["no_pooling"], _ranef(one["ols"], "batch").reindex(t["level"]),
                               atol=1e-12)
    _png(plots.shrinkage_plot(t))
    _png(plots.caterpillar_plot(plots.caterpillar_table(tidy, "batch")))
    _png(plots.decomposition_plot(plots.decomposition_table(one["native"].decompose())))
    _png(plots.hierarchy_plot(*plots.hierarchy_inputs(one["native"])))

    sleep = pd.read_csv(DATA / "sleepstudy.csv")
    slope = _fits(sleep, "Reaction ~ Days + (Days | Subject)")
    tidy = _tidy(slope)
    t = plots.shrinkage_table(tidy, plots.group_sizes(sleep, "Subject"), "Subject", term="Days")
    np.testing.assert_allclose(t.set_index("level")["partial_pooling"],
                               _ranef(slope["native"], "Subject", "Days").reindex(t["level"]), atol=1e-12)
    np.testing.assert_allclose(t.set_index("level")["no_pooling"],
                               _ranef(slope["ols"], "Subject", "Days").reindex(t["level"]), atol=1e-12)
    _png(plots.shrinkage_plot(t, title="Days slope"))
    _png(plots.caterpillar_plot(plots.caterpillar_table(tidy, "Subject", term="Days")))
    dt = plots.decomposition_table(slope["native"].decompose(), sleep["Subject"])
    assert "Subject|Days" in set(dt["part"])
    _png(plots.decomposition_plot(dt))
    _png(plots.hierarchy_plot(*plots.hierarchy_inputs(slope["native"], term="Days")))

    lonely = data.drop(index=data.index[(data["batch"] == "A") & (data["cask"] == "a")][1:])
    lonely = lonely.assign(batch=lonely["batch"].replace({"B": "$5"}))  # mathtext must not swallow it
    fits = _fits(lonely, PASTES)
    tidy = _tidy(fits)
    t = plots.shrinkage_table(tidy, plots.group_sizes(lonely, "batch:cask"), "batch:cask").set_index("level")
    assert t.loc["A:a", "n"] == 1 and "$5:a" in t.index
    _png(plots.shrinkage_plot(t.reset_index()))
    _png(plots.caterpillar_plot(plots.caterpillar_table(tidy, "batch:cask")))
    labels = pd.Series(factor_labels(lonely, ("batch", "cask")), index=lonely.index)
    _png(plots.decomposition_plot(plots.decomposition_table(fits["native"].decompose(), labels, n=30)))
    _png(plots.hierarchy_plot(*plots.hierarchy_inputs(fits["native"]), order="label"))


# ---------------------------------------------------------------------------------------------- LightGBM
def _lightgbm_fit(backend: str):
    pytest.importorskip("lightgbm")
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 4, {"(Intercept)": 0.8, "x1": 0.5}, label="M{i}"),
                             hc.LevelScenario("submarket", 3, {"(Intercept)": 0.4}, label="S{i}")), n_obs=30)
    data, _ = hc.simulate(sc, seed=4)
    opts = {"max_rounds": 20} if backend == "lightgbm-cat" else {}
    return hc.fit(data, sc.formula(), backend=backend, seed=4, **opts)


@pytest.mark.parametrize("backend", ["lightgbm", "lightgbm-cat"])
def test_lightgbm_tree_coloured_by_node_kind(backend):
    f = _lightgbm_fit(backend)
    inputs = plots.lightgbm_tree_inputs(f)
    kinds = inputs["feature_kinds"]
    assert kinds["x1"] == "slope" and kinds["x2"] == "fixed"  # x1 has a varying slope; x2 is fixed only
    if backend == "lightgbm-cat":
        assert kinds["group_level_1"] == "top group" and kinds["group_level_2"] == "nested group"
        assert inputs["kind_labels"]["top group"] == "split on group_level_1 = market codes"
    else:
        assert inputs["feature_names"] == ["x1", "x2"]
    assert inputs["kind_labels"]["fixed"] == "split on a fixed-effect predictor (x2)"
    rec = json.loads(json.dumps(plots.lightgbm_tree_record(f)))  # JSON-able: results.json carries it
    assert rec["backend"] == backend and rec["n_trees"] == f.raw.num_trees() and "Column_" not in rec["model"]
    import lightgbm as lgb

    one = lgb.Booster(model_str=rec["model"])
    t = plots.tree_nodes(one, 0, feature_kinds=rec["feature_kinds"])
    ref = plots.tree_nodes(f.raw, 0, feature_names=inputs["feature_names"], feature_kinds=kinds)
    assert list(t["kind"]) == list(ref["kind"]) and list(t["feature"]) == list(ref["feature"])
    assert set(t["kind"]) <= set(plots.TREE_KIND_COLOURS) and "leaf" in set(t["kind"])
    if plots.graphviz_missing():
        pytest.skip(f"Graphviz is missing here ({plots.graphviz_missing()})")
    _png(plots.lightgbm_tree_from_record(rec))
    src = plots.lightgbm_tree_digraph(one, 0, feature_kinds=rec["feature_kinds"], kind_labels=rec["kind_labels"]).source
    for node, r in t.iterrows():
        name = ("leaf" if r["kind"] == "leaf" else "split") + node.rsplit("-", 1)[-1][1:]
        assert f'{name} [fillcolor="{plots.TREE_KIND_COLOURS[r["kind"]]}" style=filled]' in src


def test_lightgbm_tree_records_skip_and_explain(pastes):
    assert plots.lightgbm_tree_records(list(pastes["fits"].values())) == []
    with pytest.raises(ValueError, match="no LightGBM booster"):
        plots.lightgbm_tree_inputs(pastes["fits"]["native"])


# ---------------------------------------------------------------------------------------------- demo report
def test_demo_report_has_the_diagram_and_the_tree(tmp_path):
    pytest.importorskip("lightgbm")
    res = hc.demo.run_demo(tmp_path, backends=["native", "ols", "lightgbm"], progress=lambda m: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["backend"] for r in saved["lightgbm_trees"]] == ["lightgbm"]
    html = (tmp_path / "report.html").read_text()
    assert 'id="hierarchy"' in html and '<img alt="hierarchy diagram with offsets"' in html
    assert "Backend <code>native</code>" in html
    assert "market: all 10 groups drawn; market:submarket: 15 of 50 groups drawn (35 hidden)" in html
    if not plots.graphviz_missing():
        assert 'id="lightgbm"' in html and '<img alt="LightGBM tree lightgbm"' in html
    # from results.json alone, with labels that must be escaped where they reach the HTML
    evil = '<script>alert("x")</script>'
    for f in saved["fits"]:
        for r in f["tidy"]:
            if r["group"] == "market":
                r["group"] = evil
    saved["hierarchy"]["levels"][0]["group"] = evil
    saved["lightgbm_trees"].append({"backend": evil, "error": evil})
    again = render_demo(saved)
    assert "<script>" not in again
    assert f"{'&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;'}: all 10 groups drawn" in again
    assert again.count("the tree could not be recorded: &lt;script&gt;") == 1
    # no group effects at all (ols alone still has them; a results dict without fits has none)
    bare = {**saved, "fits": [], "lightgbm_trees": []}
    assert "No backend estimated group effects." in render_demo(bare)
    assert len(res["fits"]) == 3
