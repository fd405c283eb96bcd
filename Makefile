# nety-jax: `make demo` trains on the embedded French corpus and shows replies; `make test` runs the tests.
# The Python: the newest supported one found (3.12, else 3.11; pyenv's versions count too; PYTHON=...
# picks another). jax 0.11+ needs 3.12: on 3.11 pip stops at jax 0.10.2, the oldest version we support
find_python = $(firstword $(foreach p,python$(1) $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python$(1)),\
	$(shell $(p) -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(1))))' 2>/dev/null && echo $(p))))
comma := ,
NEWEST_PYTHON ?= $(or $(call find_python,3.12),$(call find_python,3.11))
OLDEST_PYTHON ?= $(or $(call find_python,3.11),$(call find_python,3.12))
PYTHON ?= $(NEWEST_PYTHON)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= runs/demo

# pure-Python wheels our code needs that the GPU machine's Python lacks (docs/PERFORMANCE.md, "On a GPU")
GPU_WHEELS ?= tensorboardX==2.6.5

.PHONY: install demo test test-smoke ci bench bench-quality gpu-wheels clean

$(BIN)/nety-jax: pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no Python 3.11 or 3.12 found (set PYTHON=...)" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)  # an existing venv keeps its Python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

install: $(BIN)/nety-jax

demo: install
	$(BIN)/nety-jax train --config configs/demo.yaml --workdir $(DEMO_DIR)
	$(BIN)/nety-jax generate --checkpoint $(DEMO_DIR) \
	  --prompt "Bonjour !" \
	  --prompt "Comment tu t'appelles ?" \
	  --prompt "Je me sens fatigué ce soir." \
	  --prompt "Quel temps fait-il à Lyon en hiver ?" \
	  --prompt "Qu'est-ce que je peux cuisiner avec des œufs ?" \
	  --prompt "J'aime jouer de la guitare."
	@echo "loss curves: $(DEMO_DIR)/loss.png   chat: $(BIN)/nety-jax chat --checkpoint $(DEMO_DIR)"

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --max-worker-restart=0 --durations=40 --cpu-durations=40 tests

# the suite's version-sensitive files on another Python (default: the oldest found, with the oldest
# jax we support), no torch: the models, the encoder, the GPU paths' CPU checks, the CPU kernels, exact
# GELU and remat gradients, pmap/shard_map steps, configs, tasks, layers, the layering
SMOKE_PYTHON ?= $(OLDEST_PYTHON)
SMOKE_VENV ?= .venv-smoke
# (costliest first: with --no-loadscope-reorder xdist hands the files out in this order, after
# conftest.COSTS's; xdist's own order, by test count, left the 2-test pmap file to run alone at the end)
SMOKE_TESTS ?= tests/test_training.py::test_pmap_and_shard_map_equal_single_device \
	tests/test_remat.py tests/test_encoder.py tests/test_gpu_paths.py tests/test_runtime.py tests/test_model.py \
	tests/test_kernels.py tests/test_gelu.py tests/test_layers.py tests/test_tasks.py tests/test_config.py \
	tests/test_layering.py
test-smoke:
	@test -n "$(SMOKE_PYTHON)" || { echo "make: no Python for the smoke tests (set SMOKE_PYTHON=...)" >&2; exit 2; }
	test -x $(SMOKE_VENV)/bin/python || $(SMOKE_PYTHON) -m venv $(SMOKE_VENV)
	$(SMOKE_VENV)/bin/pip install -q --upgrade pip
	$(SMOKE_VENV)/bin/pip install -q -e . pytest pytest-xdist hypothesis
	$(SMOKE_VENV)/bin/python -c 'import jax, sys; print("smoke:", sys.version.split()[0], "jax", jax.__version__)'
	$(SMOKE_VENV)/bin/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --max-worker-restart=0 $(SMOKE_TESTS)

# CI (.ci/run): the whole suite on the newest Python found (3.12: the jax `make install` gives users),
# the smoke on the oldest (3.11, jax 0.10.2), when both are there (README "Two commands")
ci:
	$(MAKE) test
	@if [ -n "$(OLDEST_PYTHON)" ] && [ "$(OLDEST_PYTHON)" != "$(PYTHON)" ]; then $(MAKE) test-smoke; fi

$(VENV)/.bench: $(BIN)/nety-jax
	$(BIN)/pip install -q -e ".[test,bench]"
	@touch $@

bench: $(VENV)/.bench
	$(BIN)/python scripts/bench.py

bench-quality: $(VENV)/.bench
	$(BIN)/python scripts/bench_quality.py

gpu-wheels:
	rm -rf .gpu-wheels && mkdir -p .gpu-wheels
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu-wheels $(GPU_WHEELS)
	@ls .gpu-wheels

clean:
	rm -rf $(VENV) $(SMOKE_VENV) runs .pytest_cache .gpu-wheels .gpu-cache
