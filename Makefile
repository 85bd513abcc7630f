# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test check lint clean test-tools llama-cpp bench

install: $(STAMP)

# torch is installed first, pinned to the CPU build that pip finds locally, so
# the project's range (which admits it) installs no second, CUDA build. pip byte-compiles what
# it installs one file at a time; compileall does the same on every core (the install took
# 1 min 16 s here, against 1 min 45 s with pip compiling). It reports the one file of torch's test helpers written for Python 3.12
# (pip skips it too), hence its output and status are not kept.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile "torch==2.13.0" || $(BIN)/python -m pip install --quiet --no-compile "torch>=2.4,<2.15"
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev]"
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $(STAMP)

# The demo gives ASHA a grace period of 3 epochs: on `tiny` the trigger shows at epochs 1-3,
# and earlier rungs meet most trials still at trigger_score 0 (docs/performance.md).
DEMO_SETS = --set search.prune.grace_period=3

demo: install
	$(BIN)/ftray sweep search_spaces/trigger_tiny.yaml $(DEMO_SETS)

lint: install
	$(BIN)/ruff check ftray tests bench docs
	$(BIN)/ruff format --check ftray tests bench docs

# The tests run in TEST_WORKERS processes side by side (pytest-xdist), a test file per process
# at a time: the e2e tests spend much of their time waiting on Ray's processes and servers.
# Each test process keeps its Rays under a temp folder of its own (tests/conftest.py).
TEST_WORKERS ?= 3

test: install lint test-tools
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 tests

# The benchmarks (bench/README.md): each prints its figure last as `<name>: <number>`; the
# table in docs/performance.md quotes their output, each figure beside its command.
bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/sweep_overhead.py --warm
	$(BIN)/python bench/vs_handwritten.py --warm
	$(BIN)/python bench/asha_savings.py
	$(BIN)/python bench/search_efficiency.py
	$(BIN)/python bench/plan_accuracy.py
	$(BIN)/python bench/eval_throughput.py
	$(BIN)/python bench/eval_throughput.py --spec search_spaces/pipeline_tiny.yaml
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/gpu_throughput.py

# Go's text/template checks the Ollama Modelfile's TEMPLATE (Debian's golang-go). Installed
# when apt-get can (root); without Go those checks skip and say why.
test-tools:
	@command -v go >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null 2>&1; }; }; } || \
	  echo "note: Go is not installed; the Ollama TEMPLATE checks will be skipped"

# The fast loop: lint and every test that trains nothing and starts no Ray.
check: install lint test-tools
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# llama.cpp's llama-quantize (K-quant GGUF exports find it there) and llama-completion (runs a
# GGUF; the export tests use it when FTRAY_LLAMA_CLI names it), built from the source tree
# `ftray export` caches: about 5.5 minutes on 2 cores, so `make test` does not build them.
llama-cpp: install
	@tree=$$($(BIN)/python -c "from ftray.export.gguf import converter_dir; print(converter_dir())") && \
	cmake -S $$tree -B $$tree/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF \
	  -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null && \
	cmake --build $$tree/build --target llama-quantize llama-completion -j >/dev/null && \
	echo "export FTRAY_LLAMA_QUANTIZE=$$tree/build/bin/llama-quantize FTRAY_LLAMA_CLI=$$tree/build/bin/llama-completion"

clean:
	rm -rf $(VENV) runs ray_results mlflow.db mlruns mlartifacts .pytest_cache
