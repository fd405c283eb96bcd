# nety-jax: `make demo` trains on the embedded French corpus and shows replies; `make test` runs the tests.
# Python 3.11 (jax 0.10.2: the version the whole suite runs on in CI) where found, else 3.12 (the
# newest jax; CI smoke-tests it: jax 0.11+ needs 3.12); pyenv's versions count too
NEWEST_PYTHON ?= $(shell for p in python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.11 python3; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
OLDEST_PYTHON ?= $(shell for p in python3.11 $(wildcard $(HOME)/.pyenv/versions/3.11*/bin/python3.11) python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
PYTHON ?= $(or $(OLDEST_PYTHON),$(NEWEST_PYTHON))
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
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=20 tests

# the cheap files of the suite on another Python (default: the newest found, with the newest jax), no
# torch: the models, the encoder, the GPU paths' CPU checks, configs, tasks, layers, the layering
# (README "Two commands" says what else was run there once)
SMOKE_PYTHON ?= $(NEWEST_PYTHON)
SMOKE_VENV ?= .venv-smoke
SMOKE_TESTS ?= tests/test_model.py tests/test_encoder.py tests/test_gpu_paths.py tests/test_config.py \
	tests/test_tasks.py tests/test_layers.py tests/test_runs_layer.py
test-smoke:
	@test -n "$(SMOKE_PYTHON)" || { echo "make: no Python for the smoke tests (set SMOKE_PYTHON=...)" >&2; exit 2; }
	test -x $(SMOKE_VENV)/bin/python || $(SMOKE_PYTHON) -m venv $(SMOKE_VENV)
	$(SMOKE_VENV)/bin/pip install -q --upgrade pip
	$(SMOKE_VENV)/bin/pip install -q -e . pytest pytest-xdist hypothesis
	$(SMOKE_VENV)/bin/python -c 'import jax, sys; print("smoke:", sys.version.split()[0], "jax", jax.__version__)'
	$(SMOKE_VENV)/bin/python -m pytest -q -n 2 --dist loadscope $(SMOKE_TESTS)

# CI (.ci/run): the suite on the oldest Python (3.11, jax 0.10.2), a smoke on the newest (3.12, the
# newest jax); both within CI's time (the suite about 14 minutes, the smoke 2-3)
ci:
	$(MAKE) test
	@if [ -n "$(NEWEST_PYTHON)" ] && [ "$(NEWEST_PYTHON)" != "$(PYTHON)" ]; then $(MAKE) test-smoke; fi

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
