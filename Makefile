# sparrow-plugin: `make train` and `make test` set everything up on a fresh machine.
#
#   make train                      tiny host on the synthetic benchmark, on the CPU
#   make train BASE=unipixel        a real host's stage-1 recipe (needs its checkpoints)
#   make train BASE=unipixel TINY=1 the same recipe on a tiny configuration, on a CPU
#   make test                       the test suite
#
# Variables: BASE (tiny | videoglamm | unipixel | glus), STAGE (1), TINY (1), VENV, PYTHON.

PYTHON ?= python3
VENV ?= .venv
BASE ?= tiny
STAGE ?= 1
TINY ?=
DATA ?= data/synthetic
OUT ?= outputs/$(BASE)$(if $(filter 1,$(TINY)),-tiny)

BIN := $(VENV)/bin
SPARROW := $(BIN)/sparrow
RECIPE := recipes/$(BASE)/stage$(STAGE).yaml
RUN := $(OUT)/stage$(STAGE)
INSTALLED := $(VENV)/.installed
TINY_HOST := outputs/tiny/host

.PHONY: setup train test data tiny-host clean

setup: $(INSTALLED)

# torch first, from the exact pins; sam2 is a source package that must build against that
# torch (no build isolation, no CUDA extension); then this package and its dependencies.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --no-build-isolation sam2==1.1.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: $(DATA)/valid_u/meta_expressions.json

$(DATA)/valid_u/meta_expressions.json: | $(INSTALLED)
	$(SPARROW) data synth --out $(DATA) --seed 0

# The tiny host's own pre-training (what real hosts arrive with), cached in $(TINY_HOST):
# SAM2 and the video LLM side by side, one thread each, then the grounding head.
tiny-host: $(TINY_HOST)/.ready

$(TINY_HOST)/.ready: | $(INSTALLED) data
	$(MAKE) --no-print-directory -j2 tiny-host-sam2 tiny-host-llm
	$(SPARROW) fit --config recipes/tiny/pretrain_grounding.yaml --ckpt_path last
	touch $@

.PHONY: tiny-host-sam2 tiny-host-llm
tiny-host-sam2:
	OMP_NUM_THREADS=1 $(SPARROW) fit --config recipes/tiny/pretrain_sam2.yaml --ckpt_path last
tiny-host-llm:
	OMP_NUM_THREADS=1 $(SPARROW) fit --config recipes/tiny/pretrain_host.yaml --ckpt_path last

ifeq ($(BASE),tiny)
train: $(INSTALLED) data tiny-host
	@test -f $(RUN)/untrained.json || $(SPARROW) test --config $(RECIPE) --results $(RUN)/untrained.json
	$(SPARROW) fit --config $(RECIPE) --ckpt_path last
	$(SPARROW) test --config $(RECIPE) --ckpt_path $(RUN)/checkpoints/last.ckpt --results $(RUN)/trained.json
	$(SPARROW) report $(RUN)/untrained.json $(RUN)/trained.json --names untrained trained
else ifeq ($(TINY),1)
# the host's own recipe on a tiny configuration of its architecture, on a CPU
train: $(INSTALLED) data
	@test -f $(OUT)/release/config.json || $(SPARROW) tiny-release --host $(BASE) --out $(OUT)/release --data $(DATA)
	$(SPARROW) fit --config $(RECIPE) --config recipes/overlays/tiny_cpu.yaml \
		--model.init_args.host_args '{path: $(OUT)/release}' --trainer.default_root_dir $(RUN) \
		--trainer.logger.init_args.save_dir $(RUN) --trainer.callbacks.init_args.dirpath $(RUN)/checkpoints --ckpt_path last
else
train: $(INSTALLED)
	$(SPARROW) fit --config $(RECIPE) --ckpt_path last
endif

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs lightning_logs
