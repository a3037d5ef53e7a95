# recoverly — developer entry points. `make demo` and `make test` work from a clean clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-minimal lint typecheck pytest bench bench-db clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the project metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The reference service trains and predicts under injected faults, reports the recovery,
# then keeps serving (dashboard URL printed). `recoverly demo --no-serve --fast` exits.
demo: $(STAMP)
	$(BIN)/recoverly demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/interrogate -q src

typecheck: $(STAMP)
	$(BIN)/mypy --strict

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The core suite with no extras installed beyond the test tools.
test-minimal: $(STAMP)
	$(BIN)/python -m pytest -q -p no:randomly

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/bench_hedge.py --write
	$(BIN)/python benchmarks/bench_overload.py --write

# Needs the local PostgreSQL (see ../shared/services.sh); takes a few minutes.
bench-db: $(STAMP)
	$(BIN)/python benchmarks/bench_db_retry.py --write
	$(BIN)/python benchmarks/bench_db_bulk.py --write
	$(BIN)/python benchmarks/bench_db_copy.py --write
	$(BIN)/python benchmarks/bench_db_commit.py --write
	$(BIN)/python benchmarks/bench_db_pool.py --write

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .coverage htmlcov
