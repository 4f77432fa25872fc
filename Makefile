# One command each, from a fresh clone: `make test`, `make demo`, `make bench`.
# A local .venv is created on first use. torch comes from TORCH_SPEC unless the interpreter
# already has one: the default pins the CPU build that lies on this kind of machine's disk.
# GPU users elsewhere: make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo protocol-demo bench gpu-check clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# ruff first (pyproject.toml [tool.ruff]): a lint failure stops before the suite runs
test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: venv
	rm -rf demo-run
	$(VENV)/bin/clifvqa demo --out demo-run

# The paper's protocol in miniature (experiments/mini.yaml, --tiny); a rerun resumes.
protocol-demo: venv
	$(VENV)/bin/clifvqa experiment demo --out protocol-demo

bench: venv
	$(PY) benchmarks/bench_extract.py

# One budgeted GPU check (<= 8 min, downloads nothing): gpu-report/gpu-report.{json,md}.
# On a CPU: make gpu-check GPU_CHECK_ARGS="--device cpu --quick"
GPU_CHECK_ARGS ?=
gpu-check: venv
	$(PY) benchmarks/gpu_check.py --out gpu-report $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) demo-run protocol-demo bench-out gpu-report

# Offline wheelhouse for GPU nodes without internet (README "Offline GPU nodes"): wheels of what a
# CUDA image with torch and transformers lacks, plus clifvqa itself; never torch. Downloads.
# Another target: make wheelhouse WHEEL_PY=3.11 WHEEL_PLATFORMS=manylinux_2_34_aarch64
WHEELHOUSE ?= wheelhouse
WHEEL_PY ?= 3.12
WHEEL_PLATFORMS ?= manylinux_2_28_x86_64
WHEEL_EXTRA ?=
WHEEL_PROVIDED ?= torch==2.11.0 transformers==5.0.0 numpy==2.0.0 scipy==1.11.0
WHEEL_MAX_MB ?= 60

.PHONY: wheelhouse
wheelhouse:
	$(PYTHON) benchmarks/wheelhouse.py --out $(WHEELHOUSE) --python-version $(WHEEL_PY) \
	  --max-mb $(WHEEL_MAX_MB) $(addprefix --platform ,$(WHEEL_PLATFORMS)) \
	  $(addprefix --extra ,$(WHEEL_EXTRA)) $(addprefix --provided ,$(WHEEL_PROVIDED))
