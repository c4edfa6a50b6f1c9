# hgm — `make demo` and `make test` work on a fresh machine with only Python 3.10+.
.DELETE_ON_ERROR:
.PHONY: setup demo test test-all smoke lint clean

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HGM    := $(VENV)/bin/hgm
STAMP  := $(VENV)/.hgm-installed

# One virtualenv with hgm (editable), faiss-cpu and the test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[faiss,dev]"
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

clean:
	rm -rf runs .pytest_cache
