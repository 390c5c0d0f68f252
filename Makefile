# The commands a newcomer needs; each installs what it needs into ./.venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve demo test lint unit bench clean browser

OIDC   := tests/oidc/node_modules/.package-lock.json
# What the console's browser tests drive (tests/console/): Debian's Chromium and a Chinese font.
CHROMIUM ?= /usr/bin/chromium
WQY_FONT ?= /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
APT_GET  := env DEBIAN_FRONTEND=noninteractive apt-get

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The OPA Go engine (decision cases, Rego unit tests); see DESIGN.md section 4.
	$(BIN)/python -m pip install --quiet --ignore-requires-python "opa-golib-python-bindings==0.4.4"
	touch $(STAMP)

# The OIDC provider the tests run on loopback (Node 20.19+); see tests/oidc_provider.py. Only
# the tests need it: serve and demo run without Node.
$(OIDC): tests/oidc/package-lock.json
	npm ci --prefix tests/oidc
	touch $(OIDC)

# Chromium and the WenQuanYi font from Debian's packages, installed only when one is missing
# (the files themselves are the stamps); as root in CI, else through sudo. Only the tests need
# them, and Playwright never downloads a browser.
$(CHROMIUM) $(WQY_FONT) &:
	@if [ "$$(id -u)" -eq 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "installing chromium and fonts-wqy-microhei needs root or sudo" >&2; exit 1; fi; \
	set -x; $$sudo $(APT_GET) update && \
	$$sudo $(APT_GET) install -y --no-install-recommends chromium fonts-wqy-microhei

browser: $(CHROMIUM) $(WQY_FONT)

install: $(STAMP)

## Start the broker on embedded defaults with the demo county loaded.
serve: $(STAMP)
	$(BIN)/broker serve --demo

## Run the whole story and print it as a report.
demo: $(STAMP)
	$(BIN)/broker demo

## Lint, type-check and run the full test suite.
test: $(STAMP) $(OIDC) browser lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tests/oidc/node_modules
