#!/usr/bin/env bash
# Idempotent set-up for a fresh machine (what `make install` runs):
#   1. R and the R packages: present already, or installed with apt on Debian as root (plus the BH mend
#      that rstan/brms need); anywhere else we say why once and carry on without the R backends;
#   2. the virtual environment .venv with torch's CPU build first, then the package and its extras.
# The outcome for R is written to .venv/r-status ("ok" or "unavailable: <why>") for the tests to read.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
R_PKGS="r-base-core r-base-dev r-cran-lme4 r-cran-brms r-cran-jsonlite r-cran-reticulate r-cran-testthat r-cran-roxygen2 r-cran-mlmrev r-cran-lmertest r-cran-pbkrtest"
SYS_PKGS="libopenblas-dev libboost-dev chromium graphviz"

r_ok() {
  command -v Rscript >/dev/null 2>&1 &&
    Rscript -e 'for (p in c("lme4", "jsonlite", "brms", "reticulate", "testthat")) if (!requireNamespace(p, quietly = TRUE)) quit(status = 1)' >/dev/null 2>&1
}

# Every Debian package that is missing is installed, whether or not R was there before (a machine that already
# has R still needs graphviz, chromium, roxygen2, ... when they were added after it was set up).
missing=""
if command -v dpkg-query >/dev/null 2>&1; then
  for p in $R_PKGS $SYS_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
fi
if [ -n "$missing" ] && [ -f /etc/debian_version ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "install: installing with apt (about a minute):$missing"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/tmp/hiercompare-apt.log 2>&1; }; then
    tail -20 /tmp/hiercompare-apt.log || true
    echo "install: NOTE: apt-get install failed (see /tmp/hiercompare-apt.log)"
  fi
elif [ -n "$missing" ]; then
  echo "install: NOTE: not installed (not Debian, not root or no apt-get):$missing"
fi

r_status="ok"
if r_ok; then
  echo "install: R and the R packages are present ($(Rscript -e 'cat(R.version.string)' 2>/dev/null))"
elif [ ! -f /etc/debian_version ]; then
  r_status="unavailable: not a Debian machine, so R is not installed automatically; install R >= 4.2 with lme4, brms, jsonlite, reticulate and testthat yourself"
elif [ "$(id -u)" != "0" ]; then
  r_status="unavailable: not root, so apt cannot install R; run 'sudo apt-get install $R_PKGS' and rerun make install"
elif ! command -v apt-get >/dev/null 2>&1; then
  r_status="unavailable: apt-get not found"
else
  r_status="unavailable: apt-get install failed (see /tmp/hiercompare-apt.log)"
fi
# Debian's r-cran-bh has no include/ folder; rstan (and so brms) then stop with "Boost not found".
BH=/usr/lib/R/site-library/BH
if [ -d "$BH" ] && [ ! -e "$BH/include" ] && [ -d /usr/include/boost ] && [ "$(id -u)" = "0" ]; then
  ln -s /usr/include "$BH/include" && echo "install: linked $BH/include -> /usr/include (BH mend for rstan)"
fi
if [ "$r_status" != "ok" ]; then
  echo "install: NOTE: R backends (lme4, r_lm) will be unavailable: ${r_status#unavailable: }"
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first: the pinned CPU build lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  $PIP install "torch==2.13.0" || echo "install: NOTE: torch==2.13.0 could not be installed; the torch backend will be unavailable"
fi
extras="bayes,ml,study,dev"
if [ "$r_status" = "ok" ]; then extras="r,$extras"; fi
$PIP install -e ".[$extras]"
mkdir -p "$VENV"
echo "$r_status" > "$VENV/r-status"
echo "install: done (extras: $extras)"
