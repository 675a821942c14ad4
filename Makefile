# Two commands on a fresh machine: `make demo` (the main job on built-in data) and `make test`.
# Each creates the virtualenv it needs in $(VENV) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# torch is installed first, pinned, from pip's configured index. From PyPI (the default) a Linux install
# is a CUDA build (several GB; it runs on a CPU too). The machine this project was built on had only the
# CPU wheel (2.13.0+cpu) in its index. For a CPU-only build elsewhere:
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
DEMO_EPOCHS ?= 6

.PHONY: venv demo test test-core test-scipion clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[all]"
	touch $@

demo: venv
	$(BIN)/cryoai demo -o demo_output --epochs $(DEMO_EPOCHS)

test: test-core test-scipion

test-core: venv
	$(BIN)/python -m pytest tests -q

test-scipion: venv
	bash cryoai_scipion/tests/run_scipion_tests.sh $(BIN)/python

clean:
	rm -rf demo_output build *.egg-info
