# Two commands on a fresh machine: `make demo` and `make test`. Both build the virtual environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A CPU wheel of torch is installed first so that no dependency pulls the multi-GB CUDA build.
# On a GPU machine: make TORCH_SPEC="torch" demo
TORCH_SPEC ?= torch==2.13.0
ANNY_SPEC  ?= anny==0.6.2
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.fitloop-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	# anny declares warp-lang, which its "lbs" path never imports: install it without dependencies.
	$(PIP) install --no-deps "$(ANNY_SPEC)"
	# tensorboard: ~57 MB beside the ~2.3 GB of the rest, and its test reads the training logs back
	$(PIP) install -e ".[dev,open-model,tensorboard]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fitloop demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/fitloop bench body-model --batch 64

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
