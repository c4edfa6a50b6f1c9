# hgm — `make demo` and `make test` work on a fresh machine with only Python 3.10+.
# On a CUDA machine: `make setup GPU=1` (FAISS on the GPU instead of faiss-cpu); later
# targets keep that choice, `make setup GPU=0` goes back.
.DELETE_ON_ERROR:
.PHONY: setup demo test test-all smoke doctor docs wheel wheel-smoke lint clean

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HGM    := $(VENV)/bin/hgm

# faiss-cpu and faiss-gpu ship the same `faiss` module: exactly one is installed.
GPU    ?= $(if $(wildcard $(VENV)/.hgm-installed-gpu),1,0)
EXTRA  := $(if $(filter 1,$(GPU)),gpu,faiss)
OTHER  := $(if $(filter 1,$(GPU)),faiss-cpu,faiss-gpu)
STAMP  := $(VENV)/.hgm-installed-$(EXTRA)

# One virtualenv with hgm (editable), one FAISS and the test tools. `hgm` is this
# project's distribution name before it became hgmcli: an old venv drops it.
# --no-compile: pip would byte-compile all ~10,000 modules (~55 s of CPU here);
# Python compiles the ones hgm imports on first use.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --quiet --yes $(OTHER) hgm
	$(PY) -m pip install --quiet --no-compile -e ".[$(EXTRA),dev]"
	rm -f $(VENV)/.hgm-installed-*
	touch $@

setup: $(STAMP)

# The main job on a small embedded default: the synthetic digits (§3.2), end to end.
demo: $(STAMP)
	$(HGM) pipeline --config configs/digits.yaml --out runs/demo

# Fast tests (slow / CIFAR / GPU tests skip with a printed reason).
test: $(STAMP)
	$(PY) -m pytest -q

# Everything, slow tests included.
test-all: $(STAMP)
	HGM_SLOW=1 $(PY) -m pytest -q

# The whole pipeline on a tiny synthetic model (seconds): what CI runs after the tests.
smoke: $(STAMP)
	$(HGM) pipeline --config configs/smoke.yaml --out runs/smoke --force

# What this environment has and what `auto` picks on it.
doctor: $(STAMP)
	$(HGM) doctor

# docs/cli.md, the command-line reference, from the commands themselves (tests/test_docs.py checks it).
docs: $(STAMP)
	$(PY) -m hgmcli.clidoc > docs/cli.md

# The wheel (dist/hgmcli-*.whl), built in pip's isolated build environment.
wheel: $(STAMP)
	rm -rf dist build
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .

# The built wheel in a fresh venv (no FAISS: it is optional) with the venv's own
# pip, run from an empty folder with the bundled smoke config. pip takes torch from
# this machine's disk where its configuration says so, as for .venv; --no-compile
# as there.
WHEEL_VENV ?= build/wheel-venv
wheel-smoke: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --no-compile dist/hgmcli-*.whl
	tmp=$$(mktemp -d) && cd $$tmp && $(abspath $(WHEEL_VENV))/bin/hgm pipeline --config smoke --out run \
	  && test -f run/metrics.json && cd / && rm -rf $$tmp
	rm -rf $(WHEEL_VENV)  # about 6 GB, torch's CUDA libraries included

clean:
	rm -rf runs .pytest_cache build dist
