# Two commands do all the set-up on a fresh clone:
#   make demo   trains on the embedded default dataset (no download) and prints the result
#   make test   runs the test suite
#   make docs   builds the documentation site into site/ (mkdocs.yml)
#   make studies-env  (opt-in) the exact versions the studies run with (requirements/studies.lock)
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a loose spec would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test lint docs bench studies-env clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	# a reference to test against (dev only); --no-deps keeps pip away from the pinned torch
	$(PY) -m pip install -q --disable-pip-version-check --no-deps "pytorch-optimizer==4.1.0"
	touch $@

# --overwrite: a second `make demo` replaces the first one's run instead of refusing to
demo: $(VENV)/.installed
	$(VENV)/bin/flatlab train --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks examples docs/hooks

# the site's tools, pinned in the `docs` extra
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,docs]"
	touch $@

# --strict: a broken link or cross-reference fails; NO_MKDOCS_2_WARNING: Material's banner, not ours
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Opt-in, for reproducing a committed study to the digit: replaces the venv's torch, numpy, pillow, ...
# by the lock's versions. The lock lists every dependency, so --no-deps: pip resolves nothing (and pulls
# no CUDA torch). STUDIES_PIP_ARGS: e.g. --extra-index-url https://download.pytorch.org/whl/cpu
STUDIES_PIP_ARGS ?=
studies-env: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(STUDIES_PIP_ARGS) -r requirements/studies.lock

bench: $(VENV)/.installed
	$(PY) benchmarks/step_cost.py

clean-venv:
	rm -rf $(VENV)
