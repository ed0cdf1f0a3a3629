# The demo chain: make-demo -> preprocess -> label (settings in pipelines/demo.toml).
DEMO := $(ART)/demo

$(DEMO)/raw/annotation.json: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(DEMO)/raw --preview $(DEMO)/preview.png

$(DEMO)/dataset.h5: $(DEMO)/raw/annotation.json pipelines/demo.toml
	$(RRG) preprocess --dataset demo --root $(DEMO)/raw --artifacts $(ART)

$(DEMO)/labels.h5: $(DEMO)/dataset.h5
	$(RRG) label --dataset demo --artifacts $(ART)

demo: setup $(DEMO)/labels.h5
	@$(RRG) status --dataset demo --artifacts $(ART)
	@echo "look at: $(DEMO)/preview.png (demo images), $(DEMO)/label_prevalence.png (labels)"

clean-demo:
	rm -rf $(DEMO)
