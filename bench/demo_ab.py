"""Side by side on one machine: the warm demo at an old commit vs this checkout (not part of make bench).

    git worktree add /tmp/oldtree c96c0a3 && mkdir -p /tmp/abcwd && cd /tmp/abcwd && python /path/to/bench/demo_ab.py

Runs `hiercompare demo` from each tree, new then old, in a neutral working folder (so neither tree's folders
shadow the other's imports), with the default (warm) caches, and writes the wall times and stages. Used once, to
check that moving the demo's second process to loky (0df8139) did not slow the demo: it did until its worker
got a session of its own (os.setsid), see bench_out/demo_ab.json.
"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]  # this checkout
CODE = "import sys; sys.path.insert(0, sys.argv[1]); from hiercompare.cli import main; import hiercompare; assert hiercompare.__file__.startswith(sys.argv[1]); sys.exit(main(['demo', '--out', sys.argv[2]]))"
out = {"old": [], "new": [], "loadavg": []}
if True:
    env = dict(os.environ)  # the default caches, warm from the tests and the benchmark
    for r in range(1, 2):
        for name, path in (("new", str(NEW)), ("old", "/tmp/oldtree")):
            with tempfile.TemporaryDirectory() as d:
                e = dict(env, PYTHONPATH=path)
                t = time.perf_counter()
                p = subprocess.run([sys.executable, "-c", CODE, path, d], env=e, capture_output=True, text=True)
                wall = time.perf_counter() - t
                if p.returncode:
                    print(name, "FAILED", p.stderr[-2000:]); raise SystemExit(1)
                res = json.load(open(f"{d}/results.json"))
            if r == 0:
                print(name, "warm-up (cold cache)", round(wall, 1), flush=True); continue
            out[name].append({"wall": wall, "stages": res["timing_stages"]})
            out["loadavg"].append(os.getloadavg())
            print(name, round(wall, 1), {k: round(v, 1) for k, v in res["timing_stages"].items()}, flush=True)
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "demo_ab.json", "w"), indent=1)
