# The demo: make-demo -> preprocess, then the shared chain of pipelines/stages.mk.
DEMO := $(ART)/demo

$(DEMO)/raw/annotation.json: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(DEMO)/raw --preview $(DEMO)/preview.png

$(DEMO)/dataset.h5: $(DEMO)/raw/annotation.json pipelines/demo.toml
	$(RRG) preprocess --dataset demo --root $(DEMO)/raw --artifacts $(ART)

demo: setup $(addprefix $(DEMO)/,$(FINAL))
	@$(RRG) status --dataset demo --artifacts $(ART)
	@echo "look at: $(DEMO)/preview.png (images), $(DEMO)/label_prevalence.png (labels),"
	@echo "         $(DEMO)/prototypes_pca.png (prototypes), $(DEMO)/knowledge.md (retrieved knowledge)"

clean-demo:
	rm -rf $(DEMO)
