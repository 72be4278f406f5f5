# Every target creates .venv first when it is missing; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CSV ?= events/sample.csv
# Exact versions with hashes (`make lock` writes them from pyproject.toml): a clone next month installs
# what this one tested. The layer's lock is layers/rowcall/requirements.txt, which `sam build` reads.
LOCK := requirements/dev.lock
# checkov pins boto3 far below the project's, so it gets a venv of its own.
CHECKOV := $(VENV)/tools/checkov/bin/checkov
UV := $(VENV)/tools/uv/bin/uv
UV_VERSION := 0.13.8
UV_COMPILE = $(UV) pip compile --quiet --generate-hashes --custom-compile-command "make lock"

.PHONY: demo test up lint unit e2e bench clean lock

$(BIN)/rowcall: pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rowcall and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@( $(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK) \
		&& $(BIN)/python -m pip install --no-deps -e . ) \
		> $(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; exit 1; }
	@touch $@

$(CHECKOV): requirements/checkov.lock | $(BIN)/rowcall
	@test -x $(VENV)/tools/checkov/bin/python || $(PYTHON) -m venv $(VENV)/tools/checkov
	@echo "installing checkov into $(VENV)/tools/checkov (log: $(VENV)/tools/checkov-install.log)"
	@$(VENV)/tools/checkov/bin/python -m pip install --require-hashes --no-deps -r requirements/checkov.lock \
		> $(VENV)/tools/checkov-install.log 2>&1 || { tail -40 $(VENV)/tools/checkov-install.log; exit 1; }
	@touch $@

$(UV): | $(BIN)/rowcall
	@test -x $(VENV)/tools/uv/bin/python || $(PYTHON) -m venv $(VENV)/tools/uv
	@$(VENV)/tools/uv/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# Re-resolve every lock from pyproject.toml and requirements/checkov.in (newest allowed versions).
# The layer's is resolved for Lambda's python3.13 on arm64, held to the versions of the dev lock.
lock: $(UV)
	$(UV_COMPILE) --universal --python-version 3.11 --extra dev pyproject.toml -o $(LOCK)
	$(UV_COMPILE) --universal --python-version 3.11 requirements/checkov.in -o requirements/checkov.lock
	$(UV_COMPILE) --python-version 3.13 --python-platform aarch64-manylinux_2_28 \
		--constraints $(LOCK) pyproject.toml -o layers/rowcall/requirements.txt

.venv: $(BIN)/rowcall

demo: $(BIN)/rowcall
	$(BIN)/rowcall demo --csv "$(CSV)"

up: $(BIN)/rowcall
	$(BIN)/rowcall up

lint: $(BIN)/rowcall $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework cloudformation -f template.yaml

unit: $(BIN)/rowcall
	$(BIN)/pytest tests/unit -q

e2e: $(BIN)/rowcall
	$(BIN)/pytest tests/e2e -q

# Three workers, a test file each at a time: the end-to-end files spend most of their time waiting
# on their stacks and the provider, so three share the two cores (9.0 min with two, see README).
test: lint
	$(BIN)/pytest tests -q -n 3 --dist loadfile --durations=15

# Every benchmark, ~15 min on this 2-core machine: bench/results.json and a table of figures and goals.
bench: $(BIN)/rowcall
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .rowcall .mypy_cache .ruff_cache .pytest_cache
