# Set-up and entry points. `make run` and `make test` each create or reuse the virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saelab-installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test browser lint bench install clean

install: $(STAMP)

# torch is pinned first: on a CPU machine `torch==2.13.0` resolves to the local CPU wheel, on a GPU
# machine to the CUDA build; an unpinned torch would pull gigabytes of CUDA wheels onto a CPU machine.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "saelab needs Python >= 3.10"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,ray,dvc]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/saelab run $(ARGS)

# The report test opens report.html in headless Chromium (Debian package; we run as root).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) browser
	SAELAB_BROWSER_TEST=required SAELAB_DVC_TEST=required $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Benchmarks write their sections of benchmarks/RESULTS.md (about 4 hours in all on 2 cores).
bench: $(STAMP)
	cd benchmarks && ../$(BIN)/python extract_speed.py
	cd benchmarks && ../$(BIN)/python regime_speed.py
	cd benchmarks && ../$(BIN)/python vs_sae_probes.py
	cd benchmarks && ../$(BIN)/python probe_engine.py
	cd benchmarks && ../$(BIN)/python cost_curve.py
	cd benchmarks && ../$(BIN)/python sae_eval.py
	cd benchmarks && ../$(BIN)/python ception.py

clean:
	rm -rf $(VENV) runs .pytest_cache
