# The demo: make-demo -> preprocess, then the shared chain of pipelines/stages.mk.
DEMO := $(ART)/demo

$(DEMO)/raw/annotation.json: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(DEMO)/raw --preview $(DEMO)/preview.png

$(DEMO)/dataset.h5: $(DEMO)/raw/annotation.json pipelines/demo.toml
	$(RRG) preprocess --dataset demo --root $(DEMO)/raw --artifacts $(ART)

demo: setup $(addprefix $(DEMO)/,$(FINAL))
	@$(RRG) status --dataset demo --artifacts $(ART)
	@cat $(DEMO)/results_test.md
	@echo "look at: $(DEMO)/runs/xpronet/viewer_test.html (reports next to their images, in a browser),"
	@echo "         $(DEMO)/results_test.md (every run and baseline), $(DEMO)/runs/*/curves.png (training),"
	@echo "         $(DEMO)/adm_overlays.png (attention masks), $(DEMO)/preview.png (images),"
	@echo "         $(DEMO)/prototypes_pca.png (prototypes), $(DEMO)/knowledge.md (retrieved knowledge)"

# EKAGen and its ablation table (bench/results/ekagen_ablation.md), after the demo's own chain
EKAGEN_RUNS := base ekagen-knowledge ekagen ekagen-gid1 ekagen-gid2
demo-ekagen: setup $(foreach run,$(EKAGEN_RUNS),$(DEMO)/runs/$(run)/metrics_test.json)
	$(BIN)/python bench/ekagen_ablation.py --artifacts $(ART) --dataset demo

# the warm-started encoder-decoder and its random-initialisation twin (bench/results/warmstart.md), then the
# methods table with every evaluated run (XProNet's included; EKAGen's when make demo-ekagen made them)
WARMSTART_RUNS := warmstart warmstart-random xpronet
demo-warmstart: setup $(foreach run,$(WARMSTART_RUNS),$(DEMO)/runs/$(run)/metrics_test.json)
	$(BIN)/python bench/warmstart.py --artifacts $(ART) --dataset demo
	$(RRG) compare --dataset demo --artifacts $(ART) --split test

# PRIOR pretraining: the pretrained encoder and its two frozen-encoder baselines, scored by zero-shot
# classification, a linear probe and retrieval (bench/results/prior.md)
PRIOR_RUNS := random imagenet prior
demo-prior: setup $(DEMO)/labels.h5 $(foreach run,$(PRIOR_RUNS),$(DEMO)/pretrain/$(run)/probe_test.json)
	$(BIN)/python bench/prior.py --artifacts $(ART) --dataset demo

clean-demo:
	rm -rf $(DEMO)
