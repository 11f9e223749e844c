# The README's commands. `make demo` and `make test` are the whole set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv chromium demo lint test test-fast figures bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # the CPU wheel on this machine's disk, never a CUDA build
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

chromium:  ## Debian's chromium: kaleido PNG export and the Playwright browser tests
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium chromium-driver)

demo: venv chromium  ## the main job: train, evaluate, trace, analyse, report, then serve the dashboard
	$(VENV)/bin/workbench demo --out runs/demo

figures: venv chromium  ## regenerate every figure from the demo's stores into runs/demo/figures
	for script in analyses/f1_retrieval.py analyses/f2_propagation.py analyses/f3_pair_updates.py \
	              analyses/probes.py analyses/ablations.py; do \
	  $(PY) $$script --store runs/demo/results.zarr runs/demo/teacher.zarr --out runs/demo/figures || exit 1; \
	done

.PHONY: notebooks
notebooks: venv  ## JupyterLab on notebooks/ (their defaults read `make demo`'s runs/demo; 01 needs no demo)
	$(VENV)/bin/jupyter lab notebooks/

lint: venv  ## ruff: the formatter and the linter (pyproject.toml [tool.ruff])
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: venv chromium lint
	$(PY) -m pytest -q --durations=15

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf runs stores figures .pytest_cache
