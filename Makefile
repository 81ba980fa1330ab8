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

.PHONY: demo test bench install clean gpu-pack

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

# The packages the GPU machine's image lacks, unpacked and xz-packed for the device tool (bench/gpu_check.sh)
GPU_PACKAGES := smplx==0.1.28 webdataset==1.0.2 braceexpand==0.1.7 deltalake==1.6.6 arro3-core==0.9.1
gpu-pack: $(STAMP)
	rm -rf .gpu-pack && mkdir -p .gpu-pack/wheels .gpu-pack/site
	$(PIP) download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
		-d .gpu-pack/wheels $(GPU_PACKAGES)
	cd .gpu-pack/site && for w in ../wheels/*.whl; do $(CURDIR)/$(BIN)/python -m zipfile -e $$w .; done
	tar -cJf .gpu-pack/site.tar.xz -C .gpu-pack/site . && rm -rf .gpu-pack/wheels .gpu-pack/site

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
