# One command each, from a fresh clone: `make test`, `make demo`, `make bench`.
# A local .venv is created on first use. torch comes from TORCH_SPEC unless the interpreter
# already has one. The default pin takes the CPU wheel that lies on this kind of machine's disk
# (Python 3.11); elsewhere the same pin downloads PyPI's default Linux wheel, the CUDA build.
# CPU only, anywhere: make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# Another CUDA:       make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
# Another Python:     make test PYTHON=python3.12 VENV=.venv3.12
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
# --system-site-packages lets a GPU image's preinstalled torch serve; `VENV_ARGS=` makes an isolated venv
VENV_ARGS ?= --system-site-packages
# a pip constraints file applied to every install, e.g. .ci/constraints-lowest.txt (the lower bounds CI tests)
CONSTRAINTS ?=
# test arguments, e.g. PYTEST_ARGS="-m numerics"
PYTEST_ARGS ?=
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: venv test demo protocol-demo bench gpu-check configs clean

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP_INSTALL) $(TORCH_SPEC)
	$(PIP_INSTALL) -e ".[test]"
	touch $@

# An existing venv made by another Python would silently test that Python instead.
venv: $(VENV)/.installed
	@want=$$($(PYTHON) -c 'import sys; print(*sys.version_info[:2], sep=".")'); \
	have=$$($(PY) -c 'import sys; print(*sys.version_info[:2], sep=".")'); \
	test "$$want" = "$$have" || { echo "error: $(VENV) is Python $$have but PYTHON=$(PYTHON) is $$want;" \
	  "pass a VENV of its own (e.g. VENV=.venv$$want) or run make clean" >&2; exit 2; }

# Cheapest first, each failure stopping the rest: ruff, mypy (both in pyproject.toml), the suite.
# The root is installed as clifvqa through setuptools' editable finder, which mypy cannot follow:
# it checks the package through the link $(VENV)/mypy-path/clifvqa -> the root (its cache there too).
test: venv
	$(PY) -m ruff check .
	mkdir -p $(VENV)/mypy-path && ln -sfn $(CURDIR) $(VENV)/mypy-path/clifvqa
	cd $(VENV)/mypy-path && $(abspath $(PY)) -m mypy --config-file $(CURDIR)/pyproject.toml -p clifvqa
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: venv
	rm -rf demo-run
	$(VENV)/bin/clifvqa demo --out demo-run

# The paper's protocol in miniature (experiments/mini.yaml, --tiny); a rerun resumes.
protocol-demo: venv
	$(VENV)/bin/clifvqa experiment demo --out protocol-demo

# configs/clifvqa-b.yaml is generated from RunConfig's fields (train/config.py), the one definition
# of each setting; after adding or changing a setting, rerun this (a test fails until the file is current).
configs: venv
	$(VENV)/bin/clifvqa train --print-config > configs/clifvqa-b.yaml.tmp
	mv configs/clifvqa-b.yaml.tmp configs/clifvqa-b.yaml

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
WHEEL_PROVIDED ?= torch==2.11.0 transformers==5.0.0 numpy==2.0.0 scipy==1.11.1
WHEEL_MAX_MB ?= 60

.PHONY: wheelhouse
wheelhouse:
	$(PYTHON) benchmarks/wheelhouse.py --out $(WHEELHOUSE) --python-version $(WHEEL_PY) \
	  --max-mb $(WHEEL_MAX_MB) $(addprefix --platform ,$(WHEEL_PLATFORMS)) \
	  $(addprefix --extra ,$(WHEEL_EXTRA)) $(addprefix --provided ,$(WHEEL_PROVIDED))
