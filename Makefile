# segbench: `make demo` runs the main job, `make test` the test suite. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE = 1

.PHONY: setup demo test test-all lint format bench bench-quick bench-presets clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -m "not slow" -q --durations=15

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/run_all.py

bench-quick: setup
	$(BIN)/python benchmarks/run_all.py --quick

bench-presets: setup
	$(BIN)/python benchmarks/bench_presets.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
