# Each target bootstraps .venv on first use; nothing needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test ptx bench bench-dask asv demo dask-demo docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One stamp per extra: re-installs when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[$*]'
	touch $@

# The whole suite; the CUDA back end's tests again under Numba's CUDA simulator
# (they skip in the first run when there is no GPU); then every CUDA kernel
# compiled to PTX by the real compiler, which the simulator never runs.
test: $(VENV)/.installed-test ptx
	$(BIN)/python -m pytest -q
	NUMBA_ENABLE_CUDASIM=1 $(BIN)/python -m pytest -q tests/cuda

PTX_VENV := .venv-ptx
$(PTX_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PTX_VENV)
	$(PTX_VENV)/bin/python -m pip install -q -e '.[ptx]'
	touch $@

ptx: $(PTX_VENV)/.installed
	$(PTX_VENV)/bin/python tests/cuda/compile_ptx.py

# numbanorm vs PyTorch on the standard shapes; the table goes to the terminal.
BENCH_ARGS ?= --json bench.json --plot bench.png
bench: $(VENV)/.installed-bench
	$(BIN)/python -m numbanorm.bench $(BENCH_ARGS)

# numbanorm on Dask arrays (LocalCluster of 1 and 2 workers) vs in memory.
bench-dask: $(VENV)/.installed-bench
	$(BIN)/python -m numbanorm.bench_dask

# asv over this commit, results kept in asv_bench/results (--python=same saves
# only with a commit hash), then the HTML graphs in asv_bench/html.
asv: $(VENV)/.installed-bench
	cd asv_bench && ../$(BIN)/asv machine --yes && \
	../$(BIN)/asv run --python=same --set-commit-hash $$(git rev-parse HEAD) $(ASV_ARGS) && \
	../$(BIN)/asv publish

# Train a NumPy conv net on load_digits with each norm, batch sizes 32 and 4,
# three seeds; prints a table, draws the picture.
demo: $(VENV)/.installed-examples
	$(BIN)/python examples/conv_norms.py --out examples/conv_norms.png

# Normalize a chunked .npy file on a LocalCluster; exact BatchNorm statistics over it.
dask-demo: $(VENV)/.installed-examples
	$(BIN)/python examples/dask_scaling.py

# The documentation site, HTML in docs/_build/html; warnings are errors.
docs: $(VENV)/.installed-docs
	$(BIN)/python -m sphinx -W -b html docs docs/_build/html

clean:
	rm -rf $(VENV) $(PTX_VENV) .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
