# The commands a newcomer needs; each installs what it needs into ./.venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install serve demo test lint unit bench clean

OIDC   := tests/oidc/node_modules/.package-lock.json

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

install: $(STAMP)

## Start the broker on embedded defaults with the demo county loaded.
serve: $(STAMP)
	$(BIN)/broker serve --demo

## Run the whole story and print it as a report.
demo: $(STAMP)
	$(BIN)/broker demo

## Lint, type-check and run the full test suite.
test: $(STAMP) $(OIDC) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tests/oidc/node_modules
