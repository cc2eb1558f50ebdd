# The README's two commands. Both build ./.venv from PyPI with nothing but Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev,spark]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/rtml demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check rtml tests bench
	$(BIN)/mypy rtml

test: lint
	$(BIN)/pytest -n 4 --dist loadfile

bench: $(VENV)/.installed-dev
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .rtml .pytest_cache .mypy_cache .ruff_cache
