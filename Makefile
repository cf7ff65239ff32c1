# sparrow-plugin: `make train` and `make test` set everything up on a fresh machine.
#
#   make train                      tiny host on the synthetic benchmark, on the CPU: its
#                                   pre-training, the TSF cache, stage 1 with TSF, the
#                                   proposer, stage 2, one table
#   make anchoring                  then the same models on valid_hard (late, occluded, crossed)
#   make ablation                   then TSF's ablation: without TSF, TSF in training, TSF at
#                                   inference too, each with seg and box+seg, on valid_u and
#                                   valid_cross (identical copies whose paths cross)
#   make train BASE=unipixel        a real host's stage-1 recipe (needs its checkpoints)
#   make train BASE=unipixel STAGE=2        its stage 2 (needs stage 1 and a proposer)
#   make train BASE=unipixel TINY=1 [STAGE=2] the same recipe on a tiny configuration, on a CPU
#   make test                       the test suite
#
# Variables: BASE (tiny | videoglamm | unipixel | glus), STAGE (1 | 2), TINY (1), VENV, PYTHON.
#
# Python: 3.10 to 3.13 (pyproject.toml's requires-python). Without PYTHON, make builds $(VENV)
# with the first of python3.11, python3.12, python3.13, python3.10, python3 whose version fits;
# PYTHON=/path/to/python is used as given once its version is checked. When none fits, make
# says so and stops before creating anything. An existing $(VENV) is checked on every run
# (its Python runs, is supported, has pip, and is PYTHON's version when PYTHON is given) and
# is never rebuilt or removed by make: when it doesn't fit, make says to remove it.

PYTHON ?=  # empty: make chooses (see "Which Python" below)
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
TINY_PROPOSER := outputs/tiny/proposer
TSF_CACHE := outputs/tiny/tsf/train

.PHONY: setup train test data tiny-host tiny-proposer tsf-cache anchoring ablation clean python-check

# --- Which Python -------------------------------------------------------------------------
# The versions every pin in pyproject.toml installs on (keep in step with requires-python).
PY_SUPPORTED := 3.10 3.11 3.12 3.13
PY_RANGE := $(firstword $(PY_SUPPORTED))-$(lastword $(PY_SUPPORTED))
# 3.11 first: the project's results were measured with it; then the versions that use the
# very same pins (3.10 gets older releases of three of them).
PY_CANDIDATES := $(if $(strip $(PYTHON)),$(PYTHON),python3.11 python3.12 python3.13 python3.10 python3)

# The rest is expanded only inside recipes, so `make clean` and the like probe nothing.
# An interpreter's version ("3.11.7"), or nothing when it doesn't run: a name found on PATH
# isn't enough, a pyenv shim for a version that pyenv has but hasn't selected fails.
py_version = $(shell $(1) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
# "3.11" for "3.11.7" ($(basename) drops the last ".suffix")
py_minor = $(basename $(call py_version,$(1)))
# The first of a list of interpreters with a supported version (probing stops there).
first_supported = $(if $(1),$(if $(filter $(PY_SUPPORTED),$(call py_minor,$(firstword $(1)))),$(firstword $(1)),$(call first_supported,$(wordlist 2,$(words $(1)),$(1)))))
PY = $(call first_supported,$(PY_CANDIDATES))
# "python3.11 (not found), python3 (3.13.0)", for the message when none fits
comma := ,
rparen := )
PY_FOUND = $(subst $(rparen) ,$(rparen)$(comma) ,$(foreach p,$(PY_CANDIDATES),$(if $(strip $(PYTHON)),PYTHON=)$(p) ($(or $(call py_version,$(p)),not found))))
VENV_EXISTS = $(wildcard $(VENV)/pyvenv.cfg)
VENV_VERSION = $(call py_version,$(BIN)/python)

# Runs before anything that uses $(VENV) (an order-only prerequisite of $(INSTALLED), so it
# never makes the installation out of date) and stops make with one message on a misfit.
python-check:
# no interpreter to build $(VENV) with (or PYTHON itself doesn't fit)
	$(if $(PY),,$(if $(or $(strip $(PYTHON)),$(if $(VENV_EXISTS),,1)),$(error \
	  sparrow-plugin needs Python $(PY_RANGE); found $(PY_FOUND). \
	  Install one (pyenv install 3.11) or run make PYTHON=/path/to/python3.11)))
# $(VENV) from an unsupported Python (an older Makefile used any python3), or whose Python is gone
	$(if $(VENV_EXISTS),$(if $(filter $(PY_SUPPORTED),$(basename $(VENV_VERSION))),,$(error \
	  $(if $(VENV_VERSION),$(VENV) has Python $(VENV_VERSION) but sparrow-plugin needs Python $(PY_RANGE),$(BIN)/python does not run). \
	  Remove $(VENV) (rm -rf $(VENV)) and run make again)))
# $(VENV) half made (python -m venv fails without ensurepip, e.g. Debian without python3-venv)
	$(if $(VENV_EXISTS),$(if $(wildcard $(BIN)/pip),,$(error \
	  $(VENV) has no pip (its creation failed?). Remove $(VENV) (rm -rf $(VENV)) and run make again)))
# PYTHON asks for another version than $(VENV) has
	$(if $(and $(VENV_EXISTS),$(strip $(PYTHON))),$(if $(filter $(call py_minor,$(PYTHON)),$(basename $(VENV_VERSION))),,$(error \
	  $(VENV) has Python $(VENV_VERSION) but PYTHON=$(PYTHON) is $(call py_version,$(PYTHON)). \
	  Remove $(VENV) (rm -rf $(VENV)) to rebuild it with that one, or choose another VENV=)))

setup: $(INSTALLED)

# A new venv from the chosen Python (an existing one was checked above and is kept); torch
# first, from the exact pins; sam2 is a source package that must build against that torch
# (no build isolation, no CUDA extension); then this package and its dependencies.
$(INSTALLED): pyproject.toml | python-check
	$(if $(VENV_EXISTS),,$(PY) -m venv $(VENV))
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --quiet --no-build-isolation sam2==1.1.0
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $@

data: $(DATA)/valid_cross/meta_expressions.json

# valid_cross is written last, and each split is moved into place whole; --overwrite: a run
# cut short (or an older benchmark without valid_cross) left splits that the same seed
# writes again byte for byte
$(DATA)/valid_cross/meta_expressions.json: | $(INSTALLED)
	$(SPARROW) data synth --out $(DATA) --seed 0 --overwrite

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

# The TSF cache of the train split (annotation tracks, seconds); an interrupted build resumes
tsf-cache: $(TSF_CACHE)/.complete

$(TSF_CACHE)/.complete: | $(INSTALLED) data
	$(SPARROW) tsf build --config recipes/tiny/stage1.yaml --out $(TSF_CACHE)
	touch $@

# The tiny host's box proposer, pre-trained on the benchmark's COCO boxes with its SAM2
tiny-proposer: $(TINY_PROPOSER)/release/config.json

$(TINY_PROPOSER)/release/config.json: | $(INSTALLED) data tiny-host
	$(SPARROW) fit --config recipes/tiny/proposer.yaml --ckpt_path last

ifeq ($(BASE),tiny)
# Stage 1 ([SEG], TSF in training), then stage 2 (the filtration head over the proposer's boxes), each scored on
# valid_u; stage 2 with each way of prompting SAM2, side by side with stage 1 and the untrained
# model: boxes found on every frame (the tiny recipes' per_frame mode), then SAM2's memory
# carrying the object from the first frame (track), from the best frame, and re-anchored.
S1 := $(OUT)/stage1
S2 := $(OUT)/stage2
STAGE1 := recipes/tiny/stage1.yaml --ckpt_path $(S1)/checkpoints/last.ckpt
STAGE2 := recipes/tiny/stage2.yaml --ckpt_path $(S2)/checkpoints/last.ckpt
SET := --model.init_args.config
TRACK := $(SET).decoder.mode track
BEST := $(TRACK) $(SET).decoder.cond_frame best
RE_ANCHOR := $(TRACK) $(SET).decoder.re_anchor 0.0 $(SET).decoder.re_anchor_drift 0.5
train: $(INSTALLED) data tiny-host tiny-proposer tsf-cache
	@test -f $(S1)/untrained.json || $(SPARROW) test --config recipes/tiny/stage1.yaml --results $(S1)/untrained.json
	$(SPARROW) fit --config recipes/tiny/stage1.yaml --ckpt_path last
	$(SPARROW) test --config $(STAGE1) --results $(S1)/trained.json
	$(SPARROW) fit --config recipes/tiny/stage2.yaml --ckpt_path last
	$(SPARROW) test --config $(STAGE2) $(SET).prompt box --results $(S2)/box.json
	$(SPARROW) test --config $(STAGE2) --results $(S2)/box+seg.json
	$(SPARROW) test --config $(STAGE2) $(TRACK) --results $(S2)/track.json
	$(SPARROW) test --config $(STAGE2) $(BEST) --results $(S2)/best.json
	$(SPARROW) test --config $(STAGE2) $(RE_ANCHOR) --results $(S2)/re-anchor.json
	$(SPARROW) report $(S1)/untrained.json $(S1)/trained.json $(S2)/box.json $(S2)/box+seg.json $(S2)/track.json \
		$(S2)/best.json $(S2)/re-anchor.json --names untrained seg box box+seg track best re-anchor \
		--proposer $(TINY_PROPOSER)/release/recall.json

# After make train: the same models on valid_hard (targets entering late, occluded, crossed),
# where tracking from one prompted frame goes wrong; what cond_frame best and re-anchoring are for.
HARD := --data.init_args.test_split valid_hard
anchoring: | $(INSTALLED)
	@test -f $(S2)/checkpoints/last.ckpt || $(MAKE) --no-print-directory train
	$(SPARROW) test --config $(STAGE1) $(HARD) --results $(S1)/hard.json
	$(SPARROW) test --config $(STAGE2) $(HARD) --results $(S2)/hard-box+seg.json
	$(SPARROW) test --config $(STAGE2) $(HARD) $(TRACK) --results $(S2)/hard-track.json
	$(SPARROW) test --config $(STAGE2) $(HARD) $(BEST) --results $(S2)/hard-best.json
	$(SPARROW) test --config $(STAGE2) $(HARD) $(RE_ANCHOR) --results $(S2)/hard-re-anchor.json
	$(SPARROW) test --config $(STAGE2) $(HARD) $(BEST) $(SET).decoder.re_anchor 0.0 $(SET).decoder.re_anchor_drift 0.5 \
		--results $(S2)/hard-best+re-anchor.json
	$(SPARROW) report $(S1)/hard.json $(S2)/hard-box+seg.json $(S2)/hard-track.json $(S2)/hard-best.json \
		$(S2)/hard-re-anchor.json $(S2)/hard-best+re-anchor.json --names seg box+seg track best re-anchor best+re-anchor

# After make train: TSF's ablation. The models without TSF are trained here (stage 1 with
# tsf.mode off, its own stage 2); the make-train models are TSF in training only; at inference
# they also read TSF from the annotation's tracks (an oracle: no detector ships here) or from
# their own first pass. Each with seg (stage 1) and box+seg (stage 2), on valid_u and on
# valid_cross, whose crossing_identity row is added to the table; the paper's figures below.
AB := $(OUT)/ablation
NO_TSF := $(SET).tsf.mode off --data.init_args.tsf_tracks null
IN_DIR = --trainer.default_root_dir $(1) --trainer.logger.init_args.save_dir $(1) --trainer.callbacks.init_args.dirpath $(1)/checkpoints
AB_S1 := recipes/tiny/stage1.yaml --ckpt_path $(AB)/none-stage1/checkpoints/last.ckpt $(NO_TSF)
AB_INIT := --model.init_args.init_from $(AB)/none-stage1/checkpoints/last.ckpt
AB_S2 := recipes/tiny/stage2.yaml $(AB_INIT) --ckpt_path $(AB)/none-stage2/checkpoints/last.ckpt
GT_TRACKS := $(SET).tsf.mode train+infer $(SET).tsf.infer dataset --data.init_args.tsf_eval_tracks annotation
OWN_TRACKS := $(SET).tsf.mode train+infer $(SET).tsf.infer first_pass
AB_NAMES := off/seg off/box+seg train/seg train/box+seg infer-gt/seg infer-gt/box+seg infer-own/seg infer-own/box+seg
AB_FILES = $(foreach n,$(subst /,-,$(AB_NAMES)),$(AB)/$(1)$(n).json)
# the eight results on split $(1), written as $(AB)/$(2)<name>.json
define ablation_tests
$(SPARROW) test --config $(AB_S1) --data.init_args.test_split $(1) --results $(AB)/$(2)off-seg.json
$(SPARROW) test --config $(AB_S2) --data.init_args.test_split $(1) --results $(AB)/$(2)off-box+seg.json
$(SPARROW) test --config $(STAGE1) --data.init_args.test_split $(1) --results $(AB)/$(2)train-seg.json
$(SPARROW) test --config $(STAGE2) --data.init_args.test_split $(1) --results $(AB)/$(2)train-box+seg.json
$(SPARROW) test --config $(STAGE1) --data.init_args.test_split $(1) $(GT_TRACKS) --results $(AB)/$(2)infer-gt-seg.json
$(SPARROW) test --config $(STAGE2) --data.init_args.test_split $(1) $(GT_TRACKS) --results $(AB)/$(2)infer-gt-box+seg.json
$(SPARROW) test --config $(STAGE1) --data.init_args.test_split $(1) $(OWN_TRACKS) --results $(AB)/$(2)infer-own-seg.json
$(SPARROW) test --config $(STAGE2) --data.init_args.test_split $(1) $(OWN_TRACKS) --results $(AB)/$(2)infer-own-box+seg.json
endef
ablation: | $(INSTALLED)
	@test -f $(S2)/checkpoints/last.ckpt || $(MAKE) --no-print-directory train
	$(SPARROW) fit --config recipes/tiny/stage1.yaml $(NO_TSF) $(call IN_DIR,$(AB)/none-stage1) --ckpt_path last
	$(SPARROW) fit --config recipes/tiny/stage2.yaml $(AB_INIT) $(call IN_DIR,$(AB)/none-stage2) --ckpt_path last
	$(call ablation_tests,valid_u,)
	$(call ablation_tests,valid_cross,cross-)
	$(SPARROW) report $(call AB_FILES,) --names $(AB_NAMES) --also $(call AB_FILES,cross-)
	@cat docs/paper_tsf_ablation.txt
else ifeq ($(TINY),1)
# the host's own recipe on a tiny configuration of its architecture, on a CPU; stage 2 starts
# from the tiny stage 1 (run first when missing) and a tiny proposer on the tiny release's SAM2
TINY_RUN = --model.init_args.host_args '{path: $(OUT)/release}' --trainer.default_root_dir $(1) \
	--trainer.logger.init_args.save_dir $(1) --trainer.callbacks.init_args.dirpath $(1)/checkpoints --ckpt_path last
TINY_STAGE2 = --model.init_args.init_from $(OUT)/stage1/checkpoints/last.ckpt \
	--model.init_args.config.box.proposer $(OUT)/proposer --model.init_args.config.box.image_size 128
train: $(INSTALLED) data
	@test -f $(OUT)/release/config.json -a -f $(OUT)/proposer/config.json || \
		$(SPARROW) tiny-release --host $(BASE) --out $(OUT)/release --data $(DATA) --proposer $(OUT)/proposer
	$(if $(filter 2,$(STAGE)),@test -f $(OUT)/stage1/checkpoints/last.ckpt || $(SPARROW) fit --config recipes/$(BASE)/stage1.yaml \
		--config recipes/overlays/tiny_cpu.yaml $(call TINY_RUN,$(OUT)/stage1))
	$(SPARROW) fit --config $(RECIPE) --config recipes/overlays/tiny_cpu.yaml $(call TINY_RUN,$(RUN)) $(if $(filter 2,$(STAGE)),$(TINY_STAGE2))
else
train: $(INSTALLED)
	$(SPARROW) fit --config $(RECIPE) --ckpt_path last
endif

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs lightning_logs
