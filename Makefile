# Set-up, demo and tests in one place; the README shows these commands and .ci/run calls `make test`.
#   make demo   install, then train and compare every algorithm on the embedded task
#   make test   install, then ruff and the test suite
#   make gpu-check  on a GPU machine (no install needed): compiled kernel tests, the kernel
#               benchmark at N=16k V=128k H=4096 bf16 and an FSDP2 SFT step, in one table
# TORCH pins the CPU build of torch this kind of machine's pip finds offline; CONSTRAINTS pins
# every dependency to the tested versions (.ci/constraints.txt). On a GPU machine run
# `make test TORCH= CONSTRAINTS=` to keep the CUDA build of torch you already have.
PYTHON ?= python
TORCH ?= torch==2.13.0
CONSTRAINTS ?= .ci/constraints.txt

.PHONY: install demo test lint bench gpu-check

install:
	$(PYTHON) -m pip install --quiet $(TORCH) $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"

demo: install
	$(PYTHON) -m lightning_rlhf demo

test: install lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .

bench: install
	$(PYTHON) -m kernels.bench

gpu-check:
	$(PYTHON) -m lightning_rlhf.gpu_check
