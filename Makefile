# Entry points for a fresh machine: `make demo` (the main job end to end on an embedded sample),
# `make sim-demo` (closed loop on Meta-World: collect -> train -> roll out -> success table) and
# `make test` (the test suite). Each creates .venv and installs what it needs first: the demos
# the runtime dependencies only (plus the `sim` extra for sim-demo), the tests the `test` extras
# on top (so `make test` after `make demo` adds just those).
VENV    ?= .venv
PY      := $(VENV)/bin/python
RUNTIME := $(VENV)/.vlakit-runtime
TESTING := $(VENV)/.vlakit-test

.PHONY: setup demo sim-demo test samples bench clean

$(RUNTIME): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first where none is present (the pinned 2.13.0), so `torch>=2.4` below adds nothing
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(RUNTIME)

$(TESTING): $(RUNTIME)
	$(PY) -m pip install -q -e ".[test]"
	touch $(TESTING)

setup: $(RUNTIME)

demo: $(RUNTIME)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

sim-demo: $(RUNTIME)
	$(PY) -m pip install -q -e ".[sim]"
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/sim_demo.sh

test: $(TESTING)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

# the sample store of each source, for configs/{calvin_sample,bridge,aloha,robomimic,lerobot}.yaml
samples: $(RUNTIME)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/samples.sh

clean:
	rm -rf demo runs samples
