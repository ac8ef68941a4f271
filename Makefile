# The README's two commands: `make demo` and `make test`. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/nnunet-ras: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install demo test bench
install: $(BIN)/nnunet-ras

demo: install
	$(BIN)/nnunet-ras demo -workdir demo_run

test: install
	$(BIN)/python -m pytest -v -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_network.py
