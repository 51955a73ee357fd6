# The README's two commands: `make demo` and `make test`. Only Python 3.10+ and make are needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# An editable install writes no bytecode, and PYTHONDONTWRITEBYTECODE (set in
# some shells and CI images) stops imports writing it: compile it once, or
# every worker start compiles the package again (~60 ms).
$(VENV)/.demo-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m compileall -q fs_task_queue
	touch $@

$(VENV)/.test-installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m compileall -q fs_task_queue
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/fs-task-queue demo

lint: $(VENV)/.test-installed
	$(BIN)/ruff check fs_task_queue tests benchmarks
	$(BIN)/ruff format --check fs_task_queue tests benchmarks

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python -m compileall -q fs_task_queue
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
