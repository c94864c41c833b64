# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and on its own: GPU users install their CUDA build of torch
# into the venv before `make` (or set TORCH_SPEC / TORCH_INDEX); on CPU-only machines the
# CPU build is used.  Nothing is reinstalled when an importable torch is already there.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test test-fast install install-test clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo sweep (it builds the synthetic world and its base model first when absent); a new
# name per run, so `make demo` can be run again (`xalign report <name>` reads one back).
demo: $(VENV)/.installed
	$(VENV)/bin/xalign sweep configs/sweeps/demo.yaml --name demo-$$(date +%Y%m%d-%H%M%S)

# The whole suite (CI runs this).
test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The unit tests, about a minute: without the marked tiers (pyproject.toml lists them; pick
# one with e.g. `pytest -m distributed`).
FAST_DESELECT = not integration and not benchmark and not distributed and not slow and not realmodel and not browser
test-fast: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "$(FAST_DESELECT)"

clean-venv:
	rm -rf $(VENV)
