# pyfile — one executable file for a GGUF language model.
# Quick start:  make demo   (set up, fetch SmolLM2, build smollm2.pyfile, ask it a question)
#               make test   (the whole suite, slow end-to-end tests included)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pyfile-setup
DEMO   := smollm2.pyfile

.PHONY: setup tools model demo test test-fast bench clean gpu

setup: $(STAMP)

# Everything a build reuses (the portable engines, the carried interpreters, wheels, runtime
# bundles) is cached outside git, keyed by what produced it; `pyfile engine build` compiles
# the engine once (~10 min on 2 cores; `--arch aarch64` as long) and the venv installs that
# same wheel, so tests run the engine files carry; `pyfile python build` compiles the
# carried CPython for x86-64 and aarch64 (~15 min each).
export PYFILE_BUILD_CACHE ?= $(HOME)/.cache/pyfile-dev/build

$(STAMP): pyproject.toml src/pyfile/engines.py src/pyfile/carried.py scripts/build-variant.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@scripts/install-tools.sh build
	@# Two chains at once (each compiles with -j2; their configure steps are serial): the
	@# engines (x86-64, then aarch64 cross-compiled) and the carried CPython (both machines).
	@$(VENV)/bin/pyfile python build >/dev/null 2>$(VENV)/.python-build.log & pypid=$$!; \
	  wheel=$$($(VENV)/bin/pyfile engine build) && \
	  $(PY) -m pip install --quiet --no-deps --force-reinstall "$$wheel" && \
	  $(PY) -m pip install --quiet "$$wheel" && \
	  $(VENV)/bin/pyfile engine build --arch aarch64 >/dev/null || { kill $$pypid; exit 1; }; \
	  wait $$pypid || { tail -3 $(VENV)/.python-build.log >&2; exit 1; }
	@# The Vulkan variant `pyfile build` packs by default (cached like the engine, ~5 min once).
	@PYTHON=$(PY) scripts/build-variant.sh vulkan >/dev/null || \
	  echo "pyfile: no Vulkan variant built (see above); pyfile build will say so" >&2
	@# ggml's GPU sources, which a file compiles with the user's ROCm on first use (~1 s).
	@PYTHON=$(PY) scripts/build-variant.sh rocm >/dev/null
	@touch $@

# The CUDA variant for every architecture from Turing to Blackwell (hours on 2 cores; cached,
# and packed by every later `pyfile build`). CUDA_ARCHS=75-virtual builds the smallest one.
gpu: setup
	PYTHON=$(PY) scripts/build-variant.sh cuda

tools:
	@scripts/install-tools.sh

model:
	@scripts/fetch-model.sh $(PY) >/dev/null

$(DEMO): setup model
	$(VENV)/bin/pyfile build "$$(scripts/fetch-model.sh $(PY))" -o $(DEMO)

demo: $(DEMO)
	VIRTUAL_ENV=$(abspath $(VENV)) ./$(DEMO) --chat --temp 0 -n 64 \
	  -p "What is the capital of France? Answer in one sentence."

test: setup model tools
	PYFILE_TEST_MODEL="$$(scripts/fetch-model.sh $(PY))" $(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup model
	$(PY) bench/bench_build.py
	$(PY) bench/bench_run.py "$$(scripts/fetch-model.sh $(PY))"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache $(DEMO)
