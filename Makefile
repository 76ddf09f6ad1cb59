# Quick start: `make demo` (set up + train on the embedded data), `make test` (set up + test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: setup test demo bench bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,peers]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

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

# One CUDA device, about 6 minutes: ours vs timm, bf16 inference / latency / training, eager and compiled.
bench-gpu: $(STAMP)
	mkdir -p runs && $(PY) benchmarks/gpu.py --json runs/bench-gpu.json

clean:
	rm -rf $(VENV) runs build *.egg-info
