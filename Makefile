# Each target bootstraps .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test bench demo docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per extra: re-installs when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

# The whole suite, then the CUDA back end's tests again under Numba's CUDA
# simulator (they skip in the first run when there is no GPU).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q tests/cuda

# numbanorm vs PyTorch on the standard shapes; the table goes to the terminal.
BENCH_ARGS ?= --json bench.json --plot bench.png
bench: $(VENV)/.installed-bench
	$(BIN)/python -m numbanorm.bench $(BENCH_ARGS)

# Train a NumPy MLP on load_digits with each norm; prints a table, draws the picture.
demo: $(VENV)/.installed-examples
	$(BIN)/python examples/compare_norms.py --out examples/compare_norms.png

# The documentation site, HTML in docs/_build/html; warnings are errors.
docs: $(VENV)/.installed-docs
	$(BIN)/python -m sphinx -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
