# Everything a fresh machine needs is done by `make install`, on which every other target depends.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install demo test test-fast r-check r-docs bench validate clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch $(STAMP)

demo: install
	$(BIN)/hiercompare demo --out demo_out

test: install
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory r-check

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# R CMD build + R CMD check --no-manual of the R package at the repository root, in a temporary folder; fails on
# a WARNING or ERROR, prints the NOTEs; skipped, saying why, where make install recorded R as unavailable.
r-check: install
	bash scripts/r_check.sh

# man/*.Rd and NAMESPACE from the roxygen comments in R/ (commit them: R CMD check reads the files, not R/'s comments)
r-docs:
	Rscript -e 'roxygen2::roxygenise()'

bench: install
	$(BIN)/python bench/run.py --out bench_out/results.json
	$(BIN)/python bench/native_speed.py bench_out/native_speed.json
	$(BIN)/python bench/bayes.py bench_out/bayes.json
	$(BIN)/python bench/brms_flags.py bench_out/brms_flags.json
	$(BIN)/python bench/study.py bench_out/study.json
	$(BIN)/python bench/demo.py bench_out/demo.json
	$(BIN)/python bench/stream.py bench_out/stream.json
	$(BIN)/python bench/compare.py bench_out/compare.json
	$(BIN)/python bench/glmm.py bench_out/glmm.json
	$(BIN)/python bench/torch_speed.py bench_out/torch_speed.json

# Regenerate every recorded validation study (validation/*.toml -> validation/<name>_out: results.parquet,
# manifest.json, performance.csv, report.html, report_tables/); the part files are dropped afterwards. binary and count
# take about 5 minutes each on 2 idle cores, count_nb 2; binary_bayes and count_bayes about 40 minutes together (pymc
# and brms cost minutes per fit); validation/glmm_studies.md summarises those five.
VALIDATION := seed_small unbalanced weak_signal nonlinear binary count count_nb binary_bayes count_bayes
validate: install
	@set -e; for c in $(VALIDATION); do \
	  rm -rf validation/$${c}_out; \
	  $(BIN)/hiercompare study validation/$$c.toml --out validation/$${c}_out $(if $(WORKERS),--workers $(WORKERS)); \
	  $(BIN)/hiercompare report validation/$${c}_out; \
	  rm -rf validation/$${c}_out/parts; \
	done

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
