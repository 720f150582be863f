# Reasoning Heads: `make book` executes every chapter (ci profile) and builds the HTML book; `make test` runs
# the whole test suite, which also executes every chapter and builds the book.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= ci
RUN_DIR ?= runs/$(PROFILE)
# On CPU machines torch is installed first from this pin (a local CPU wheel exists; an unpinned torch would pull
# gigabytes of CUDA wheels). pyproject.toml's range (torch>=2.6) is then already satisfied.
TORCH_CPU ?= torch==2.13.0

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM = false

.PHONY: install book chapters html lint test test-fast bench organism organism-check clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_CPU)"
	$(BIN)/pip install -q -e ".[book,test]"
	touch $@

install: $(VENV)/.installed

chapters: install
	$(BIN)/python -m support.run --profile $(PROFILE) --run-dir $(RUN_DIR)

# The "Results at a glance" page is generated from the run directory's summary tables before every build, and the
# "Performance" page from the benchmarks' results files (bench/results/*.txt, written by `make bench`).
html: install
	$(BIN)/python -m support.book glance --run-dir $(RUN_DIR)
	$(BIN)/python -m support.book performance
	$(BIN)/jupyter-book build . --path-output book --warningiserror --keep-going --quiet

book: chapters html
	@echo "book built: book/_build/html/index.html"

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q --durations=12

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Each benchmark's `name = value` lines are stored, with the machine and date, in bench/results/<bench>.txt (small
# text files to commit), which the book's "Performance" page shows.
bench: install
	$(BIN)/python -m support.book bench bench/bench_tracing.py
	$(BIN)/python -m support.book bench bench/bench_finetune.py
	$(BIN)/python -m support.book bench bench/bench_rl.py
	$(BIN)/python -m support.book bench bench/bench_circuits.py
	$(BIN)/python -m support.book bench bench/bench_interventions.py
	$(BIN)/python -m support.book bench bench/bench_gpu.py

organism: install
	$(BIN)/python -m support.organism train

# Retrain both organism checkpoints into a temporary folder and compare them bit for bit with the committed ones
# (about half an hour on 2 cores; outside `make test`).
organism-check: install
	$(BIN)/python -m support.organism check

clean:
	rm -rf book/_build book/chapters runs
