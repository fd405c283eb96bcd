# nety-jax: `make demo` trains on the embedded French corpus and shows replies; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= runs/demo

.PHONY: install demo test bench bench-quality clean

$(BIN)/nety-jax: pyproject.toml
	$(PYTHON) -m venv $(VENV)
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
	$(BIN)/python -m pytest -q -n 2 --dist loadscope tests

$(VENV)/.bench: $(BIN)/nety-jax
	$(BIN)/pip install -q -e ".[test,bench]"
	@touch $@

bench: $(VENV)/.bench
	$(BIN)/python scripts/bench.py

bench-quality: $(VENV)/.bench
	$(BIN)/python scripts/bench_quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache
