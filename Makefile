# Everything a fresh machine needs is done by `make install`, on which every other target depends.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch $(STAMP)

demo: install
	$(BIN)/hiercompare demo --out demo_out

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/run.py --out bench_out/results.json
	$(BIN)/python bench/bayes.py bench_out/bayes.json

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache
