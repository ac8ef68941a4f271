# The README's two commands: `make demo` and `make test`. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests run against: independent DICOM readers (dicom3tools' dciodvfy, plastimatch)
DEBIAN_PACKAGES := dicom3tools plastimatch
DEBIAN_COMMANDS := dciodvfy plastimatch
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/nnunet-ras: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: install system-packages demo test bench
install: $(BIN)/nnunet-ras system-packages

system-packages:
	@for c in $(DEBIAN_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	fi

demo: install
	$(BIN)/nnunet-ras demo -workdir demo_run

test: install
	$(BIN)/python -m pytest -v -p no:cacheprovider

bench: install
	$(BIN)/python bench/bench_network.py
