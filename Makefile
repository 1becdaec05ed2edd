# Two commands for a fresh machine: `make demo` and `make test` (README). Both create or reuse .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
OUT    := out

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qmri simulate molli --acceleration 4 --out $(OUT)/molli_R4.h5
	$(VENV)/bin/qmri replay $(OUT)/molli_R4.h5 --chain t1_molli --out $(OUT)/molli_R4
	$(VENV)/bin/qmri evaluate $(OUT)/molli_R4 $(OUT)/molli_R4.h5
	$(VENV)/bin/qmri preview $(OUT)/molli_R4/images.h5 --series 11 --out $(OUT)/molli_R4/t1_map.png
	@echo "demo done: raw file $(OUT)/molli_R4.h5 (truth in /truth), T1 and SD maps $(OUT)/molli_R4/images.h5 (series 11, 12; the calibrated 90% interval in 21, 22), T1 map to look at $(OUT)/molli_R4/t1_map.png, DICOM $(OUT)/molli_R4/dicom"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest

# Everything but the end-to-end chains and other slow tests (marked slow), without lint: under 3 minutes.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) bench/bench_server_throughput.py
	$(PY) bench/bench_fitting.py
	$(PY) bench/bench_mrf.py

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
