# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/local.yaml

.PHONY: run test check bench clean

$(BIN)/fastgw: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(BIN)/fastgw
	$(BIN)/fastgw serve --config $(CONFIG)

test: $(BIN)/fastgw
	$(BIN)/python -m pytest -q

check: $(BIN)/fastgw
	$(BIN)/fastgw check --config $(CONFIG)

bench: $(BIN)/fastgw
	$(BIN)/python -m bench run --systems fastgw,fastgw-redact,nginx,direct

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
