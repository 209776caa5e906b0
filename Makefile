# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch==2.13.0 first: a CPU build that needs no multi-GB CUDA download.
# The package itself only asks for torch>=2.4, which that build satisfies.
TORCH_SPEC ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: demo test install dev bench bench-gpu screenshots docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[web]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/ebmlab report --out report --seed 0
	@echo "Open report/index.html"

test: dev
	$(BIN)/python -m pytest -n 2 -q

bench: install
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/samplers.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/nuts.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/tempering.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/trace_memory.py --write docs/benchmarks.md
	$(BIN)/python benchmarks/normals.py --write docs/benchmarks.md

# One CUDA GPU, at most ~8 minutes (needs a CUDA build of torch: make TORCH_SPEC=torch bench-gpu): samplers at
# 10^4-10^6 chains, digits training against a hand-written loop, two GPUs under torchrun when present.
bench-gpu: install
	$(BIN)/python benchmarks/gpu.py --write docs/benchmarks.md

# Refresh the README's screenshots (tests write them to a temporary directory otherwise).
screenshots: dev
	EBMLAB_REFRESH_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/test_report.py tests/playground/test_playground_browser.py

# The API reference site in site/ (the notebooks executed, their outputs shown).
docs: dev
	EBMLAB_DOCS_EXECUTE=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) report site dist build .pytest_cache
