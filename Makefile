# Every target creates .venv first when it is missing; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CSV ?= events/sample.csv

.PHONY: demo test up lint unit e2e bench clean

$(BIN)/rowcall: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rowcall and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@( $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e ".[dev]" ) \
		> $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $@

.venv: $(BIN)/rowcall

demo: $(BIN)/rowcall
	$(BIN)/rowcall demo --csv "$(CSV)"

up: $(BIN)/rowcall
	$(BIN)/rowcall up

lint: $(BIN)/rowcall
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml

unit: $(BIN)/rowcall
	$(BIN)/pytest tests/unit -q

e2e: $(BIN)/rowcall
	$(BIN)/pytest tests/e2e -q

test: lint
	$(BIN)/pytest tests -q

bench: $(BIN)/rowcall
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .rowcall .mypy_cache .ruff_cache .pytest_cache
