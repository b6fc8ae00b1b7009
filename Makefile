# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/ganseg: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and exactly pinned: the CPU wheel on disk (a looser pin pulls GBs of CUDA wheels)
	$(BIN)/pip install -q torch==2.13.0 "numpy<2"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/ganseg

venv: $(BIN)/ganseg

demo: venv
	$(BIN)/ganseg sample --seeds 0-15 --truncation 0.7 --out runs/demo
	# ... then deployment: serve the bundled default UNet with the real Triton server (free loopback
	# ports), segment rendered "real" photos through it, stop the server (docs/serving.md)
	$(BIN)/ganseg render --split test --n 6 --res 128 --out runs/demo/photos
	$(BIN)/ganseg client runs/demo/photos --serve --out runs/demo/triton_masks
	# how good the served masks are: against the rendered photos' exact masks
	$(BIN)/ganseg score runs/demo/triton_masks runs/demo/photos

# Debian's Chromium for `ganseg annotate`'s browser tests (Playwright drives it; Playwright's own
# browser download cannot work on these machines): apt-get only when it is missing
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: venv browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# NVIDIA's real perf_analyzer in a tool environment of its own (.venv-perf/): the tritonclient==2.40.0
# wheel's binary + libcudart (PyPI) + Debian's libb64 (tools/perf_analyzer/install.sh says why)
PERF_VENV := .venv-perf
$(PERF_VENV)/bin/perf_analyzer: tools/perf_analyzer/install.sh
	PY=$(PY) bash tools/perf_analyzer/install.sh $(PERF_VENV)
	touch $@

perf-analyzer: $(PERF_VENV)/bin/perf_analyzer

# Latency/throughput/memory benchmarks (<= 15 min on 2 CPU cores; not part of `make test`):
# writes benchmarks/results/<host>-<date>.{json,md}, -perf_analyzer.csv and plots (docs/benchmarks.md)
bench: venv perf-analyzer
	$(BIN)/python benchmarks/bench.py

# Adopt a generator as the bundled default if the quality probe finds it better than the current one:
# re-distils the default UNet, reruns the few-shot/auto-shot tables, rewrites the cards (tools/adopt.py)
# make adopt RUN=runs/gan [BUDGET=quick]   a `ganseg train-gan` run folder (its checkpoint's EMA G + D;
#                                          train-gan writes no discriminator file of its own)
# make adopt G=default_generator.safetensors D=default_discriminator.safetensors   an exported pair
#                                          (what tools/gpu_pass.py writes)
adopt: venv
	$(BIN)/python tools/adopt.py $(or $(RUN),$(G) $(D)) --budget $(or $(BUDGET),full)

.PHONY: venv browser demo test perf-analyzer bench adopt
