# Two commands on a fresh machine: `make demo` (the main job on built-in data) and `make test`.
# Each creates the virtualenv it needs in $(VENV) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# The CPU build of torch is installed first so that pip does not pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
DEMO_MINUTES ?= 5

.PHONY: venv demo test test-core test-scipion clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

demo: venv
	$(BIN)/cryoai demo -o demo_output --minutes $(DEMO_MINUTES)

test: test-core test-scipion

test-core: venv
	$(BIN)/python -m pytest tests -q

test-scipion: venv
	bash cryoai_scipion/tests/run_scipion_tests.sh $(BIN)/python

clean:
	rm -rf demo_output build *.egg-info
