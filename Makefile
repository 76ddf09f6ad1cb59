# Quick start: `make demo` (set up + train on the embedded data), `make test` (set up + test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: setup lint test test-quick demo bench bench-gpu gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,peers]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# The lint gate: ruff's checks and formatting (pyproject.toml [tool.ruff]); `ruff format .` fixes the latter.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# One pytest-xdist worker per core, one thread each (tests/conftest.py), a test file per worker at a time (module
# fixtures made once).
test: lint
	$(PY) -m pytest -q -n auto --dist loadfile

# The inner loop (a few minutes): the lint gate, every variant on the reference and the fast paths, the
# authors' fixtures, the seam, the CLI's errors. `make test` runs everything (CI).
QUICK_TESTS := tests/test_models.py tests/test_parity.py tests/test_fast_paths.py tests/test_cli.py tests/test_files.py
test-quick: lint
	$(PY) -m pytest -q -m "not slow" $(QUICK_TESTS) -k "not compiled and not bf16_training"

demo: $(STAMP)
	$(VENV)/bin/coat train --output runs/demo --overwrite
	@echo "plots:      runs/demo/plots/"
	@echo "checkpoint: runs/demo/best.safetensors"
	@echo "summary:    runs/demo/summary.json"
	@echo "predict:    .venv/bin/coat predict docs/digit_7.png --checkpoint runs/demo/best.safetensors"

bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_inference.py --all --repeats 3
	$(PY) benchmarks/bench_inference.py --batch-size 1 --repeats 30
	$(PY) benchmarks/bench_compile.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_resolution.py
	$(PY) benchmarks/bench_op_count.py --all
	$(PY) benchmarks/bench_input.py
	$(PY) benchmarks/bench_deploy.py

# One CUDA device, about 6 minutes: ours vs timm, bf16 inference / latency / training, eager and compiled.
bench-gpu: $(STAMP)
	mkdir -p runs && $(PY) benchmarks/gpu.py --json runs/bench-gpu.json

# The whole GPU check in one command, for a lent GPU machine whose python3 already holds torch, torchvision,
# timm and tensorboard and which cannot install anything (no set-up: the source tree on PYTHONPATH): the
# benchmark (about 6 minutes), then the tests that run on the GPU there (Triton kernels, the authors'
# fixtures on the device, coat train end to end on the device; 2-3 minutes). GPU_PY / BENCH_ARGS override.
GPU_PY ?= python3
BENCH_ARGS ?= --json runs/bench-gpu.json
gpu-check:
	mkdir -p runs
	PYTHONPATH=src $(GPU_PY) benchmarks/gpu.py $(BENCH_ARGS); bench=$$?; \
	PYTHONPATH=src $(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_triton_attention.py tests/test_parity.py \
		tests/test_train_run.py; tests=$$?; \
	echo "benchmark exit $$bench, tests exit $$tests"; test $$bench -eq 0 && test $$tests -eq 0

clean:
	rm -rf $(VENV) runs build *.egg-info
