# megalodon-lit: the named tasks. Every task sets up .venv first if it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.megalodon-lit-installed
LAB_PORT ?= 8888

.PHONY: setup demo test lab docs gpu clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# pip's machine-wide config may list absent local indexes; hide its warnings about them, nothing else.
	set -o pipefail; $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 \
	  | { grep -v "^WARNING: Location '" || true; }
	@touch $(STAMP)

## setup: create .venv with the pinned toolchain and the package in editable mode
setup: $(STAMP)

## demo: the main job: train a byte-level Megalodon on the Python stdlib source for a few minutes, check it learned, stream a sample
demo: setup
	$(BIN)/megalodon-lit demo --out demo_out

## test: sync check, pytest tests/, every notebook run once (nbval), the docs site (-W), the site and JupyterLab in headless Chromium, the kernels compiled for sm_90
test: setup
	bash tools/test.sh

## lab: JupyterLab on nbs/ (also as root)
lab: setup
	cd nbs && ../$(BIN)/jupyter lab --no-browser --port $(LAB_PORT) $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

## docs: the documentation site in docs/_build/html (sphinx-build -W), and README.md from nbs/index.ipynb
docs: setup
	bash tools/docs.sh

## gpu: on a CUDA machine: verify the kernels, run the kernel and benchmark notebooks with their gpu cells (outputs kept), results in kernels/results/<gpu>/
gpu: setup
	$(BIN)/megalodon-lit verify
	$(BIN)/python tools/run_nb.py --flags gpu nbs/10_triton_cema.ipynb nbs/11_triton_timestep_norm.ipynb nbs/12_triton_attention.ipynb nbs/20_benchmarks.ipynb
	$(BIN)/nbdev-clean
	@echo "GPU outputs are in the notebooks and kernels/results/; commit both"

clean-venv:
	rm -rf $(VENV)
