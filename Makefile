# Entry points for a fresh machine: `make demo` (the main job end to end on an embedded sample),
# `make sim-demo` (closed loop on Meta-World: collect -> train -> roll out -> success table) and
# `make test` (the test suite). Each creates .venv and installs everything first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vlakit-installed

.PHONY: setup demo sim-demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch from the local wheel first, so the unpinned `torch>=2.4` below installs nothing more
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

sim-demo: setup
	$(PY) -m pip install -q -e ".[sim]"
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/sim_demo.sh

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf demo runs
