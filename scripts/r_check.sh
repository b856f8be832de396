#!/usr/bin/env bash
# R CMD check of the R package at the repository root (what `make r-check`, and so `make test`, runs):
#   R CMD build, then R CMD check --no-manual on the tarball, in a temporary folder, with HIERCOMPARE_VENV set
#   to .venv so that the package's own tests (tests/testthat) reach the Python package.
# R CMD check exits 0 even after a WARNING; this script fails on any WARNING or ERROR and prints the NOTEs.
# Where `make install` recorded R as unavailable (.venv/r-status), it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
status=$(cat .venv/r-status 2>/dev/null || echo "unknown: make install has not run")
if [ "$status" != "ok" ]; then
  echo "r-check: skipped: R is ${status}"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# R CMD build copies the whole folder before it applies .Rbuildignore, .venv (GBs) included; so build from a
# copy of the source files alone (those git tracks or would track), to which .Rbuildignore then applies.
mkdir "$tmp/hiercompare"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | grep -zv '^\.venv' |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$tmp/hiercompare"
else
  tar --exclude=./.venv --exclude=./.git -cf - . | tar -xf - -C "$tmp/hiercompare"
fi
cd "$tmp"
start=$(date +%s)
if ! R CMD build --no-build-vignettes --no-manual hiercompare >build.log 2>&1; then
  cat build.log
  echo "r-check: R CMD build failed"
  exit 1
fi
tarball=$(ls hiercompare_*.tar.gz)
HIERCOMPARE_VENV="$root/.venv" R CMD check --no-manual "$tarball" >check.log 2>&1 || true
log=hiercompare.Rcheck/00check.log
line=$(grep '^Status:' "$log" || echo "Status: no status line (R CMD check did not finish)")
# the NOTEs and WARNINGs with their explanations (each block runs to the next '* checking' line)
awk '/^\* /{show = ($0 ~ /(NOTE|WARNING|ERROR)$/)} show' "$log"
# the package's own tests: how many ran, and any skipped (with the reason, e.g. the Python package not found)
grep -h -E '^\[ FAIL|^• ' hiercompare.Rcheck/tests/testthat.Rout* 2>/dev/null | awk '!seen[$0]++' || true
echo "r-check: R CMD check of $tarball in $(( $(date +%s) - start )) s: $line"
if ! grep -q '^Status: ' "$log" || grep -Eq '^Status: .*(WARNING|ERROR)' "$log"; then
  tail -n 60 check.log
  for f in hiercompare.Rcheck/tests/*.Rout.fail; do [ -e "$f" ] && tail -n 40 "$f"; done
  echo "r-check: FAILED"
  exit 1
fi
