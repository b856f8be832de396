"""The package's imports go one way: no cycle among its modules, counting imports inside functions and the
backend registry's dynamic imports; and ``import hiercompare`` stays light (no demo, no second process, no
heavy library)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hiercompare"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (top level or inside functions, absolute or relative).

    ``importlib.import_module`` targets written as ``"hiercompare.x:Name"`` / ``"hiercompare.x"`` string
    constants (the backend registry) count as imports of the module that holds them. The implicit import of a
    parent package that every submodule import causes is not counted (it is how Python packages work)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    unresolved: list[str] = []
    for mod, path in mods.items():
        package = mod if _is_package(path) else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                    if base not in mods:
                        unresolved.append(f"{mod}: from {'.' * node.level}{node.module or ''} (no module {base})")
                else:
                    base = node.module or ""
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("hiercompare.") and " " not in node.value:
                targets = [node.value.split(":")[0]]
            for t in targets:
                # the longest package module that the dotted name starts with
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    assert not unresolved, f"relative imports of modules that do not exist: {unresolved}"
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_and_registry_imports():
    g = import_graph()
    # a top-level relative import, one inside a function, and the registry's dynamic import
    assert "hiercompare.errors" in g["hiercompare.fitting"]
    assert "hiercompare.fitting" in g["hiercompare.cli"]          # cli imports inside its command functions
    assert "hiercompare.backends.lme4" in g["hiercompare.backends"]  # REGISTRY = {"lme4": "hiercompare.backends.lme4:..."}
    # and the cycle finder finds a cycle when there is one
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert found == [], "import cycles (each a set of modules that import each other): " + json.dumps(found)


def test_import_hiercompare_is_light():
    code = ("import sys, json, hiercompare; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('hiercompare', 'torch', 'pymc', "
            "'rpy2', 'lightgbm', 'pytensor', 'distributed', 'matplotlib')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = {m for m in loaded if not m.startswith("hiercompare")}
    assert heavy == set(), heavy
    for lazy in ("hiercompare.demo", "hiercompare.aside", "hiercompare.study", "hiercompare.report", "hiercompare.cli"):
        assert lazy not in loaded
    assert "hiercompare.fitting" in loaded  # the control: the eager face is there


def test_lazy_names_resolve():
    import hiercompare as hc
    from hiercompare.study import Study

    assert hc.Study is Study
    assert callable(hc.demo.run_demo)
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        hc.nosuch
