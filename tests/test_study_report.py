"""The study report (``hiercompare report DIR``): sections, tables, escaping, LightGBM tree kinds, and a browser check.

One tiny study (2 replications of 4 markets x 3 submarkets x 25 rows; ols and mixedlm, plus r_lm and lme4 where
R is available, plus lightgbm-cat where lightgbm is installed) is run once per module and rendered. Its
scenario name holds HTML (``<script>``), which must reach the page only escaped.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.performance import performance
from hiercompare.report import plots
from hiercompare.report.study import ReportError, agreement_pairs, agreement_table, render_study, study_report
from hiercompare.simulate import LevelScenario, Scenario
from hiercompare.study import Study

EVIL = 'tiny <script>alert("x")</script> & co'
SECTIONS = ["scenarios", "estimates", "recovery", "coverage", "caterpillar", "agreement", "hierarchy", "timings",
            "provenance"]


def _scenario() -> Scenario:
    return Scenario(
        levels=(LevelScenario("market", 4, {"(Intercept)": 0.8, "x1": 0.5}, ((1.0, 0.3), (0.3, 1.0)), label="M{i}"),
                LevelScenario("submarket", 3, {"(Intercept)": 0.4}, label="S{i}")),
        n_obs=25, name=EVIL)


def _backends() -> list[str]:
    avail = hc.available_backends()
    out = ["ols", "mixedlm"]
    if "lme4" in avail and "r_lm" in avail:
        out += ["r_lm", "lme4"]
    if "lightgbm-cat" in avail:
        out.append("lightgbm-cat")
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_report") / "study"
    backends = _backends()
    options = {"lightgbm-cat": {"max_rounds": 30}} if "lightgbm-cat" in backends else {}
    st = Study([_scenario()], replications=2, backends=backends, options=options, seed=3, name="tiny")
    res = st.run(out, workers=1, progress=False)
    path = render_study(out)
    return dict(folder=out, path=path, html=path.read_text(encoding="utf-8"), results=res, backends=backends)


def _images(html: str) -> list[tuple[str, bytes]]:
    return [(alt, base64.b64decode(b)) for alt, b in
            re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', html)]


def test_every_section_present_with_its_figures(report):
    html = report["html"]
    for sec in SECTIONS:
        assert f'id="{sec}"' in html, sec
    imgs = _images(html)
    alts = [a for a, _ in imgs]
    for png in (b for _, b in imgs):  # every embedded image is a real PNG with a non-empty size
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", png[16:24])
        assert w > 50 and h > 50
    assert any(a.startswith("estimates vs truth") for a in alts)
    assert any(a.startswith("zip plot") for a in alts)
    # one caterpillar per grouping factor and varying term: market (Intercept), market x1, submarket (Intercept)
    assert sum(a.startswith("caterpillar") for a in alts) == 3
    assert any(a.startswith("hierarchy") for a in alts)
    assert "replication 0" in html  # the caterpillars and hierarchy say which replication they show
    if "lme4" in report["backends"]:
        assert {"Bland-Altman ols vs r_lm", "Bland-Altman mixedlm vs lme4"} <= set(alts)
    else:
        assert "No Python vs R pair ran in this study" in html
    if "lightgbm-cat" in report["backends"]:
        assert 'id="lightgbm"' in html and "LightGBM tree lightgbm-cat" in alts
        assert "BASELINE" in html and "tree 0 of" in html
    else:
        assert 'id="lightgbm"' not in html


def test_tables_written_and_consistent_with_performance(report):
    tdir = report["folder"] / "report_tables"
    names = {p.stem for p in tdir.glob("*.csv")}
    assert {"scenarios", "truth", "estimates", "performance", "agreement", "timings", "provenance"} <= names
    perf = pd.read_csv(tdir / "performance.csv", keep_default_na=False, na_values=[""])
    ref = performance(report["results"])
    assert len(perf) == len(ref)
    np.testing.assert_allclose(perf["coverage"].to_numpy(float), ref["coverage"].to_numpy(float), equal_nan=True)
    np.testing.assert_allclose(perf["bias_mcse"].to_numpy(float), ref["bias_mcse"].to_numpy(float), equal_nan=True)
    # the recovery table on the page shows "estimate (MCSE)" for the fixed effects of mixedlm
    row = ref[(ref["backend"] == "mixedlm") & (ref["effect"] == "fixed") & (ref["term"] == "x2")].iloc[0]
    from hiercompare.report import _fmt

    assert f"{_fmt(row['bias'])} ({_fmt(row['bias_mcse'])})" in report["html"]
    timings = pd.read_csv(tdir / "timings.csv")
    assert set(timings["backend"]) == set(report["backends"])
    assert (timings["n_rep"] == 2).all()
    prov = pd.read_csv(tdir / "provenance.csv")
    assert {"seed", "git commit", "version: python"} <= set(prov["key"])
    assert str(prov.set_index("key").at["seed", "value"]) == "3"


def test_labels_are_escaped(report):
    html = report["html"]
    assert "<script>" not in html
    assert "alert(" not in html or "&lt;script&gt;alert(" in html
    assert "&lt;script&gt;" in html
    assert 'tiny &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; co' in html


@pytest.mark.skipif("lme4" not in hc.available_backends(), reason="lme4 (R) is not available here")
def test_agreement_ols_r_lm_is_exact(report):
    pairs = agreement_pairs(report["results"])
    tab = agreement_table(pairs).set_index(["pair", "effect"])
    assert tab.at[("ols vs r_lm", "all"), "max_rel_diff"] < 1e-6
    assert tab.at[("ols vs r_lm", "all"), "n"] > 20
    # mixedlm vs lme4 pairs every parameter both report in the same replication (a boundary fit may differ)
    res = report["results"]
    keys = ["replication", "effect", "group", "level", "term"]
    res = res[res["estimate"].notna()]
    a = set(map(tuple, res.loc[res["backend"] == "mixedlm", keys].to_numpy()))
    b = set(map(tuple, res.loc[res["backend"] == "lme4", keys].to_numpy()))
    assert tab.at[("mixedlm vs lme4", "all"), "n"] == len(a & b) > 0


def test_agreement_table_limits_of_agreement():
    m = pd.DataFrame({"est_a": [1.0, 2.0, 3.0, 4.0], "est_b": [1.1, 1.9, 3.2, 3.9], "effect": "fixed"})
    m["diff"] = m["est_a"] - m["est_b"]
    tab = agreement_table({("a", "b"): m}).set_index("effect")
    d = np.array([-0.1, 0.1, -0.2, 0.1])
    assert tab.at["all", "mean_diff"] == pytest.approx(d.mean())
    assert tab.at["all", "loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert tab.at["all", "max_abs_diff"] == pytest.approx(0.2)


def test_missing_folder_names_the_fix(tmp_path):
    with pytest.raises(ReportError, match="hiercompare study CONFIG.toml"):
        render_study(tmp_path)


def test_cli_report(report, tmp_path):
    from hiercompare.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(report["folder"]), "--out", str(out), "--no-lightgbm-tree"]) == 0
    assert 'id="provenance"' in out.read_text() and (tmp_path / "report_tables" / "performance.csv").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_lightgbm_tree_node_kinds():
    lgb, X, y, b = _tree_booster()
    kinds = {"group_level_1": "top group", "group_level_2": "nested group", "x1": "slope"}
    t = plots.tree_nodes(b, 0, feature_kinds=kinds)
    splits = t[t["kind"] != "leaf"]
    assert set(splits["kind"]) <= {"top group", "nested group", "slope", "other"}
    for f, k in zip(splits["feature"], splits["kind"]):
        assert k == kinds.get(f, "other")
    assert (t["kind"] == "leaf").sum() == len(splits) + 1  # a binary tree
    assert {"top group", "slope"} <= set(splits["kind"])  # both signals are strong enough to be split on
    # a booster trained on a NumPy array: Column_<i> renamed
    b2 = lgb.train({"verbose": -1}, lgb.Dataset(X[["x1", "x2"]].to_numpy(), y), num_boost_round=1)
    t2 = plots.tree_nodes(b2, 0, feature_names=["x1", "x2"], feature_kinds={"x1": "slope"})
    assert set(t2.loc[t2["kind"] != "leaf", "feature"]) <= {"x1", "x2"}
    with pytest.raises(ValueError, match="out of range"):
        plots.tree_nodes(b, 7)
    with pytest.raises(ValueError, match="feature kinds"):
        plots.tree_nodes(b, 0, feature_kinds={"x1": "tree"})


def _tree_booster():
    lgb = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    n = 600
    X = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                      "group_level_1": pd.Categorical(rng.integers(0, 4, n)),
                      "group_level_2": pd.Categorical(rng.integers(0, 12, n))})
    y = (2.0 * X["x1"] + np.asarray(X["group_level_1"].cat.codes) + np.sin(3 * X["x2"])
         + 0.5 * np.asarray(X["group_level_2"].cat.codes) % 3)
    return lgb, X, y, lgb.train({"verbose": -1, "num_leaves": 15, "min_data_in_leaf": 5, "learning_rate": 0.3},
                                lgb.Dataset(X, y), num_boost_round=3)


def _width(g) -> float:
    return float(g.pipe(format="plain").decode().split(None, 4)[2])


def test_lightgbm_tree_drawing():
    """LightGBM's own drawing (create_tree_digraph) with every node filled by its kind, an escaped legend and
    title, named NumPy features, the narrower orientation, and a tree without a split."""
    lgb, X, y, b = _tree_booster()
    if plots.graphviz_missing():
        pytest.skip(f"Graphviz is missing here ({plots.graphviz_missing()}); make install installs it")
    kinds = {"group_level_1": "top group", "group_level_2": "nested group", "x1": "slope"}
    g = plots.lightgbm_tree_digraph(b, 0, feature_kinds=kinds, title='t <script>"x"</script>',
                                    kind_labels={"top group": "codes of <school> & co"})
    src = g.source
    t = plots.tree_nodes(b, 0, feature_kinds=kinds)
    for node, r in t.iterrows():
        number = node.rsplit("-", 1)[-1][1:]
        name = ("leaf" if r["kind"] == "leaf" else "split") + number
        assert f'{name} [fillcolor="{plots.TREE_KIND_COLOURS[r["kind"]]}" style=filled]' in src, name
        if r["kind"] == "leaf":  # LightGBM's own node: an ellipse with the leaf's value
            assert f"{name} [label=<leaf {number}: <B>" in src and "shape=ellipse" in src
        else:  # a box that names the split feature
            assert f"{name} [label=<<B>{r['feature']}</B>" in src
    assert {"top group", "slope", "leaf"} <= set(t["kind"])
    assert "codes of &lt;school&gt; &amp; co" in src and "<school>" not in src
    assert "t &lt;script&gt;&quot;x&quot;&lt;/script&gt;" in src and "<script>" not in src
    assert "split on a varying-slope covariate" in src  # the default legend text of a kind without a label
    png = base64.b64decode(plots.lightgbm_tree_plot(b, 0, feature_kinds=kinds, title="t"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and min(struct.unpack(">II", png[16:24])) > 200
    # orientation: "auto" is the narrower of LightGBM's two layouts
    h, v = (plots.lightgbm_tree_digraph(b, 0, orientation=o) for o in ("horizontal", "vertical"))
    assert "rankdir=LR" in h.source and "rankdir=TB" in v.source
    auto = plots.lightgbm_tree_digraph(b, 0)
    assert ("rankdir=LR" if _width(h) <= _width(v) else "rankdir=TB") in auto.source
    with pytest.raises(ValueError, match="orientation"):
        plots.lightgbm_tree_digraph(b, 0, orientation="diagonal")
    # a booster trained on a NumPy array: Column_<i> named in the drawing
    b2 = lgb.train({"verbose": -1}, lgb.Dataset(X[["x1", "x2"]].to_numpy(), y), num_boost_round=1)
    src2 = plots.lightgbm_tree_digraph(b2, 0, feature_names=["x1", "x2"], feature_kinds={"x1": "slope"}).source
    assert "Column_" not in src2 and "<B>x1</B>" in src2
    # a tree without a split (LightGBM's drawing refuses it): one leaf, drawn
    b3 = lgb.train({"verbose": -1, "min_data_in_leaf": 10_000}, lgb.Dataset(X[["x1"]].to_numpy(), y),
                   num_boost_round=1)
    g3 = plots.lightgbm_tree_digraph(b3, 0)
    assert "the tree has no split" in g3.source and g3.pipe(format="png")[:4] == b"\x89PNG"


def test_tree_drawing_without_graphviz(report, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("graphviz") and shutil.which("dot"):
        assert plots.graphviz_missing() is None
    with monkeypatch.context() as m:
        m.setattr(shutil, "which", lambda *a, **k: None)
        assert "dot" in plots.graphviz_missing()
    real = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "graphviz" else real(name, *a))
        assert "pip install" in plots.graphviz_missing()
    monkeypatch.setattr(plots, "graphviz_missing", lambda: "no dot on this machine")
    with pytest.raises(plots.GraphvizMissing, match="no dot on this machine"):
        plots.lightgbm_tree_plot(None, 0)
    if "lightgbm-cat" not in report["backends"]:
        pytest.skip("lightgbm is not installed: the study report has no LightGBM section")
    html, _ = study_report(report["folder"])
    assert 'id="lightgbm"' in html and "no dot on this machine" in html
    assert "the tree is not drawn here" in html
    assert not any(a.startswith("LightGBM tree") for a, _ in _images(html))


def test_report_names_come_from_the_data(report, tmp_path, monkeypatch):
    """Level names, labels and the root come from the scenario and the formula, not from the seed's domain."""
    sc = Scenario(levels=(LevelScenario("school", 4, {"(Intercept)": 0.8, "x1": 0.5}, ((1.0, 0.3), (0.3, 1.0)),
                                        label="School{i}"),
                          LevelScenario("class", 3, {"(Intercept)": 0.4}, label="C{i}")),
                  n_obs=20, root="Scotland", name="schools")
    lightgbm = "lightgbm-cat" in hc.available_backends() and not plots.graphviz_missing()
    backends = ["mixedlm"] + (["lightgbm-cat"] if lightgbm else [])
    out = tmp_path / "schools"
    Study([sc], replications=1, backends=backends, options={"lightgbm-cat": {"max_rounds": 20}}, seed=5,
          name="schools").run(out, workers=1, progress=False)
    seen = {}
    draw_hierarchy, draw_tree = plots.hierarchy_plot, plots.lightgbm_tree_plot

    def hierarchy_spy(root, root_value, levels, **kw):
        seen["root"], seen["levels"] = root, [list(lv["level"]) for lv in levels]
        return draw_hierarchy(root, root_value, levels, **kw)

    def tree_spy(*a, **kw):
        seen["kinds"], seen["kind_labels"] = kw["feature_kinds"], kw["kind_labels"]
        return draw_tree(*a, **kw)

    monkeypatch.setattr(plots, "hierarchy_plot", hierarchy_spy)
    monkeypatch.setattr(plots, "lightgbm_tree_plot", tree_spy)
    html = render_study(out).read_text(encoding="utf-8")
    assert seen["root"] == "Scotland"
    assert "School0" in seen["levels"][0] and "School0:C0" in seen["levels"][1]
    assert "Scotland -&gt; school (size 4) -&gt; class (size 3)" in html and "school:class" in html
    assert "market" not in html.lower() and "united_state" not in html.lower()
    if lightgbm:
        assert seen["kinds"] == {"x1": "slope", "group_level_1": "top group", "group_level_2": "nested group"}
        assert seen["kind_labels"]["top group"] == "split on group_level_1 = school codes"
        assert seen["kind_labels"]["nested group"] == "split on group_level_2 = school:class codes"
        assert "group_level_1 = school, group_level_2 = school:class" in html
    # control: the same checks find the seed's domain in a study that uses it
    assert "market:submarket" in report["html"] and "United_state" in report["html"]


# ---------------------------------------------------------------------------------------------- browser
_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var p = document.createElement("p"); p.id = "probe-result";
  p.textContent = "IMAGES_OK " + imgs.length + " " + ok;
  document.body.appendChild(p);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browse(chromium: str, page: Path, profile: Path) -> tuple[str, str]:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"chromium failed ({p.returncode}): {p.stderr[-2000:]}"
    return p.stdout, p.stderr


def _probe(dom: str) -> tuple[int, int]:
    m = re.search(r"IMAGES_OK (\d+) (\d+)", dom)
    assert m, "the probe script did not run in the browser (no IMAGES_OK line in the DOM)"
    return int(m.group(1)), int(m.group(2))


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian package `chromium`; "
                    "scripts/install.sh installs it)")
def test_report_in_headless_chromium(report, tmp_path):
    chromium = _chromium()
    page = tmp_path / "report_probe.html"
    page.write_text(report["html"].replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom, err = _browse(chromium, page, tmp_path / "profile")
    n, ok = _probe(dom)
    assert n == len(_images(report["html"])) and n >= 6
    assert ok == n, f"{n - ok} of {n} images did not decode"
    assert not _console_errors(err), _console_errors(err)
    # the escaped scenario name is text in the page, not a script element
    assert "&lt;script&gt;alert" in dom
    # negative control: the same probe sees a broken image and a console error
    bad = tmp_path / "broken.html"
    good_png = base64.b64encode(_images(report["html"])[0][1]).decode()
    bad.write_text('<html><body><img src="data:image/png;base64,AAAA"><img src="data:image/png;base64,' + good_png
                   + '"><script>console.error("probe-error")</script>' + _PROBE + "</body></html>")
    dom2, err2 = _browse(chromium, bad, tmp_path / "profile2")
    assert _probe(dom2) == (2, 1)
    assert any("probe-error" in ln for ln in _console_errors(err2))
