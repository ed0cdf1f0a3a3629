# The demo: make-demo -> preprocess, then the shared chain of pipelines/stages.mk.
DEMO := $(ART)/demo

$(DEMO)/raw/annotation.json: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(DEMO)/raw --preview $(DEMO)/preview.png $(MAKE_DEMO_ARGS)

$(DEMO)/dataset.h5: $(DEMO)/raw/annotation.json pipelines/demo.toml
	$(RRG) preprocess --dataset demo --root $(DEMO)/raw --artifacts $(ART)

# the demo also pretrains an image encoder the PRIOR way and scores it (make demo-prior adds its baselines)
demo: setup $(addprefix $(DEMO)/,$(FINAL)) $(DEMO)/pretrain/prior/probe_test.json
	@$(RRG) status --dataset demo --artifacts $(ART)
	@cat $(DEMO)/results_test.md
	@echo "look at: $(DEMO)/runs/xpronet/viewer_test.html (reports next to their images, in a browser),"
	@echo "         $(DEMO)/results_test.md (every run and baseline), $(DEMO)/runs/*/curves.png (training),"
	@echo "         $(DEMO)/adm_overlays.png (attention masks), $(DEMO)/preview.png (images),"
	@echo "         $(DEMO)/prototypes_pca.png (prototypes), $(DEMO)/knowledge.md (retrieved knowledge),"
	@echo "         $(DEMO)/pretrain/prior/curves.png and probe_test.json (PRIOR pretraining and its downstream scores)"

# EKAGen and its ablation table (bench/results/ekagen_ablation.md), after the demo's own chain
EKAGEN_RUNS := base ekagen-knowledge ekagen ekagen-gid1 ekagen-gid2
demo-ekagen: setup $(foreach run,$(EKAGEN_RUNS),$(DEMO)/runs/$(run)/metrics_test.json)
	$(BIN)/python bench/ekagen_ablation.py --artifacts $(ART) --dataset demo

# the warm-started encoder-decoder and its random-initialisation twin (bench/results/warmstart.md), then the
# methods table with every evaluated run (XProNet's included; EKAGen's when make demo-ekagen made them)
WARMSTART_RUNS := warmstart warmstart-random xpronet
demo-warmstart: setup $(foreach run,$(WARMSTART_RUNS),$(DEMO)/runs/$(run)/metrics_test.json)
	$(BIN)/python bench/warmstart.py --artifacts $(ART) --dataset demo
	$(RRG) compare --dataset demo --artifacts $(ART) --split test --baseline nearest-neighbour

# PRIOR pretraining: the pretrained encoder and its two frozen-encoder baselines, scored by zero-shot
# classification, a linear probe and retrieval (bench/results/prior.md). Pretraining needs no labels, so the
# -pool runs also learn from the phantoms of every report in the demo's training pool (POOL: 2304 studies, the
# demo's 276 among them; only its training split is read, and pretrain refuses a pool that holds a validation or
# test study of the demo), 12 epochs, beside a frozen ImageNet encoder with the same pairs and budget. With the pool
# the encoder keeps ImageNet's batch-norm statistics (--freeze-bn): mean validation Recall@1/5/10 0.508 against 0.436
# with them trained (README). The -nobank pair leaves the sentence prototype bank out (--no-spb), which the
# reference feeds into both alignments: on these pairs it costs retrieval most (validation 0.587 against 0.508;
# test R@5 0.217-0.237 against 0.087-0.090, README)
POOL := $(ART)/pretrain-pool
$(POOL)/demo/dataset.h5: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(POOL)/demo/raw --n-studies 4000 --test-studies 1 --abnormal-fraction -1
	$(RRG) preprocess --dataset demo --root $(POOL)/demo/raw --artifacts $(POOL)

# the pool runs differ only in these flags
prior-pool_FLAGS := --freeze-bn
imagenet-pool_FLAGS := --freeze-encoder
prior-pool-nobank_FLAGS := --freeze-bn --no-spb
imagenet-pool-nobank_FLAGS := --freeze-encoder --no-spb
POOL_RUNS := prior-pool imagenet-pool prior-pool-nobank imagenet-pool-nobank
$(POOL_RUNS:%=$(DEMO)/pretrain/%/encoder.pt): $(DEMO)/pretrain/%/encoder.pt: $(DEMO)/dataset.h5 $(POOL)/demo/dataset.h5
	$(RRG) pretrain --dataset demo --artifacts $(ART) --extra-data $(POOL)/demo --epochs 12 $($*_FLAGS) --name $*

PRIOR_BASELINES := imagenet imagenet-pool imagenet-pool-nobank
PRIOR_RUNS := random imagenet prior imagenet-pool prior-pool imagenet-pool-nobank prior-pool-nobank
demo-prior: setup $(DEMO)/labels.h5 $(foreach run,$(PRIOR_RUNS),$(DEMO)/pretrain/$(run)/probe_test.json)
	$(BIN)/python bench/prior.py --artifacts $(ART) --dataset demo --runs $(PRIOR_RUNS) --baselines $(PRIOR_BASELINES)

# CXR-IRGen (`make demo-synth`): the vision module (CXR-IRGen's text+image prompt) and its evaluation on the test
# prompts; synthetic training pairs (reports by the XProNet run, the language module), labelled and encoded as any
# dataset under $(ART)/synthetic/demo/; the base model trained with them (--extra-data) beside the plain base
# model; then bench/results/synthesize.md. demo-synth-prompts adds the text-only prompt's vision module (the
# paper's comparison) to the table.
SYNTH := $(ART)/synthetic/demo
VISION := $(DEMO)/synthesize/vision
# Both vision modules also learn from demo-prior's training pool (--extra-data: 2028 more training studies; validation
# and evaluation stay the demo's), with the pool's labels, features and finding masks - the masks made by the demo's
# own diagnosis classifier (adm-masks --classifier), so the classifier that scores the generated images is the one
# trained on the demo alone. Chosen on validation prompts (README, CXR-IRGen on the demo)
$(POOL)/demo/labels.h5: $(POOL)/demo/dataset.h5
	$(RRG) label --dataset demo --artifacts $(POOL)

$(POOL)/demo/features.h5: $(POOL)/demo/dataset.h5
	$(RRG) extract-features --dataset demo --artifacts $(POOL)

$(POOL)/demo/adm.h5: $(POOL)/demo/dataset.h5 $(DEMO)/adm.h5
	$(RRG) adm-masks --dataset demo --artifacts $(POOL) --classifier $(DEMO)/diagnosis.pt

VISION_NEEDS := $(DEMO)/dataset.h5 $(DEMO)/labels.h5 $(DEMO)/features.h5 $(DEMO)/adm.h5 pipelines/demo.toml \
                $(POOL)/demo/labels.h5 $(POOL)/demo/features.h5 $(POOL)/demo/adm.h5
$(VISION)/vision.pt: $(VISION_NEEDS)
	$(RRG) synthesize train-vision --dataset demo --artifacts $(ART) --extra-data $(POOL)/demo

$(DEMO)/synthesize/vision-text/vision.pt: $(VISION_NEEDS)
	$(RRG) synthesize train-vision --dataset demo --artifacts $(ART) --extra-data $(POOL)/demo --prompt text --name vision-text

$(DEMO)/synthesize/%/evaluation_test.json: $(DEMO)/synthesize/%/vision.pt $(DEMO)/adm.h5
	$(RRG) synthesize evaluate --dataset demo --artifacts $(ART) --run $*

$(SYNTH)/dataset.h5: $(VISION)/vision.pt $(DEMO)/runs/xpronet/model.pt
	$(RRG) synthesize generate --dataset demo --artifacts $(ART) --out $(ART)/synthetic

$(SYNTH)/labels.h5: $(SYNTH)/dataset.h5
	$(RRG) label --dataset demo --artifacts $(ART)/synthetic

$(SYNTH)/features.h5: $(SYNTH)/dataset.h5
	$(RRG) extract-features --dataset demo --artifacts $(ART)/synthetic

$(DEMO)/runs/base-synthetic/model.pt: $(DEMO)/runs/base/model.pt $(SYNTH)/labels.h5 $(SYNTH)/features.h5
	$(RRG) train --dataset demo --artifacts $(ART) --model base --name base-synthetic --extra-data $(SYNTH)

SYNTH_NEEDS := $(VISION)/evaluation_test.json $(DEMO)/runs/base/metrics_test.json \
               $(DEMO)/runs/base-synthetic/metrics_test.json
demo-synth: setup $(SYNTH_NEEDS)
	$(BIN)/python bench/synthesize.py --artifacts $(ART) --dataset demo --vision vision

demo-synth-prompts: setup $(SYNTH_NEEDS) $(DEMO)/synthesize/vision-text/evaluation_test.json
	$(BIN)/python bench/synthesize.py --artifacts $(ART) --dataset demo --vision vision vision-text

# The demo at IU X-Ray's size (`make demo-iu-scale`, 57 min on the 2-core VM): make-demo draws every training and
# validation report its split holds (R2Gen's split, with ../shared's annotation: 2069 / 296 studies; the hash split:
# 2304 / 352) and 300 test studies (not make demo's 300), then the demo's chain and defaults up to the methods
# table, in its own artifact root. The diagnosis classifier trains 4 epochs instead of 15 (7.5x the images per
# epoch). make demo's 276 training studies are what fits its 15 minutes; at this size XProNet's reports are longer and
# its BLEU-4 is level with the nearest neighbour's or above it (README, Demo results)
IU_SCALE := $(ART)/iu-scale
demo-iu-scale: setup
	$(MAKE) ART=$(IU_SCALE) MAKE_DEMO_ARGS="--n-studies 4000" ADM_ARGS="--epochs 4" $(IU_SCALE)/demo/results_test.md
	@cat $(IU_SCALE)/demo/results_test.md

clean-demo:
	rm -rf $(DEMO)
