# Every target creates .venv first when it is missing; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CSV ?= events/sample.csv
# Exact versions with hashes (`make lock` writes them from pyproject.toml): a clone next month installs
# what this one tested. The runtime lock is what `make demo` and `make up` need (the local stack and the
# command line: pyproject's `local` and `client` extras); the dev lock adds the test and lint tools on
# top, at the same versions. The layer's lock is layers/rowcall/requirements.txt, which `sam build` reads.
RUNTIME_LOCK := requirements/runtime.lock
LOCK := requirements/dev.lock
# checkov pins boto3 far below the project's, so it gets a venv of its own.
CHECKOV := $(VENV)/tools/checkov/bin/checkov
# uv installs in seconds what pip took a minute and a half for (README, "A newcomer's first minute");
# pip installs uv itself, from a lock with its hashes.
UV := $(VENV)/tools/uv/bin/uv
UV_COMPILE = $(UV) pip compile --quiet --generate-hashes --custom-compile-command "make lock"
# Hashes checked, nothing resolved: the lock is the whole list. uv prints each package as it lands.
UV_INSTALL = $(UV) pip install --python $(BIN)/python --require-hashes --no-deps
DEV := $(VENV)/.dev-installed

.PHONY: demo test up lint unit e2e bench clean lock

$(UV): requirements/uv.lock
	@test -x $(VENV)/tools/uv/bin/python || $(PYTHON) -m venv $(VENV)/tools/uv
	@echo "installing uv into $(VENV)/tools/uv"
	@$(VENV)/tools/uv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements/uv.lock
	@touch $@

# The demo's dependencies only: 75 packages, no pytest, mypy, playwright or schemathesis.
$(BIN)/rowcall: pyproject.toml $(RUNTIME_LOCK) | $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	@echo "installing the local stack and the rowcall command ($(RUNTIME_LOCK), $$(grep -c '^[a-z0-9].*==' $(RUNTIME_LOCK)) packages) into $(VENV)"
	@$(UV_INSTALL) -r $(RUNTIME_LOCK)
	@$(UV) pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $@

# `make test` and the other developer targets: the dev lock on top of the runtime one.
$(DEV): $(LOCK) $(BIN)/rowcall
	@echo "installing the test and lint tools ($(LOCK)) into $(VENV)"
	@$(UV_INSTALL) -r $(LOCK)
	@touch $@

$(CHECKOV): requirements/checkov.lock | $(DEV)
	@test -x $(VENV)/tools/checkov/bin/python || $(PYTHON) -m venv --without-pip $(VENV)/tools/checkov
	@echo "installing checkov into $(VENV)/tools/checkov"
	@$(UV) pip install --python $(VENV)/tools/checkov/bin/python --quiet --require-hashes --no-deps \
		-r requirements/checkov.lock
	@touch $@

# Re-resolve every lock from pyproject.toml and requirements/*.in (newest allowed versions).
# The runtime lock and the layer's are held to the versions of the dev lock (the versions the tests ran);
# the layer's is resolved for Lambda's python3.13 on arm64.
lock: $(UV)
	$(UV_COMPILE) --universal --python-version 3.11 --extra dev pyproject.toml -o $(LOCK)
	$(UV_COMPILE) --universal --python-version 3.11 --extra local --extra client \
		--constraints $(LOCK) pyproject.toml -o $(RUNTIME_LOCK)
	$(UV_COMPILE) --universal --python-version 3.11 requirements/checkov.in -o requirements/checkov.lock
	$(UV_COMPILE) --universal --python-version 3.11 requirements/uv.in -o requirements/uv.lock
	$(UV_COMPILE) --python-version 3.13 --python-platform aarch64-manylinux_2_28 \
		--constraints $(LOCK) pyproject.toml -o layers/rowcall/requirements.txt

.venv: $(DEV)

demo: $(BIN)/rowcall
	$(BIN)/rowcall demo --csv "$(CSV)"

up: $(BIN)/rowcall
	$(BIN)/rowcall up

lint: $(DEV) $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	BC_SKIP_MAPPING=TRUE $(CHECKOV) --quiet --compact --skip-download --framework cloudformation -f template.yaml

unit: $(DEV)
	$(BIN)/pytest tests/unit -q

e2e: $(DEV)
	$(BIN)/pytest tests/e2e -q

# Three workers, a test file each at a time: the end-to-end files spend most of their time waiting
# on their stacks and the provider, so three share the two cores (9.0 min with two, see README).
# loadgroup: a file is one unit unless a test names a group of its own (tests/conftest.py), and the
# units start longest first (--no-loadscope-reorder keeps that order; xdist's own puts them in
# order of their number of tests, which started the three-test chaos file last).
test: lint
	$(BIN)/pytest tests -q -n 3 --dist loadgroup --no-loadscope-reorder --durations=15

# Every benchmark, ~15 min on this 2-core machine: bench/results.json and a table of figures and goals.
bench: $(DEV)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .rowcall .mypy_cache .ruff_cache .pytest_cache
