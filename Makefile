# `make demo` and `make test` do all the set-up on a fresh machine:
# a virtual environment in .venv, PyTorch and torchreid at the versions of
# constraints.txt, this package (editable) with its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install test demo clean gpu-check

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) tools/demo.py

# The GPU check (benchmarks/README.md) with this machine's python3 and torch, no
# virtual environment: a lent GPU machine has its own Python and no network.
GPU_CHECK_OUT ?= log/gpu_check
gpu-check:
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) log build *.egg-info
