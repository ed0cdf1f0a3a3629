# The demo chain (settings in pipelines/demo.toml):
# make-demo -> preprocess -> label -> extract-features -> kmeans-init, build-knowledge
DEMO := $(ART)/demo

$(DEMO)/raw/annotation.json: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(DEMO)/raw --preview $(DEMO)/preview.png

$(DEMO)/dataset.h5: $(DEMO)/raw/annotation.json pipelines/demo.toml
	$(RRG) preprocess --dataset demo --root $(DEMO)/raw --artifacts $(ART)

$(DEMO)/labels.h5: $(DEMO)/dataset.h5
	$(RRG) label --dataset demo --artifacts $(ART)

$(DEMO)/features.h5: $(DEMO)/dataset.h5
	$(RRG) extract-features --dataset demo --artifacts $(ART)

$(DEMO)/prototypes.pkl: $(DEMO)/features.h5 $(DEMO)/labels.h5
	$(RRG) kmeans-init --dataset demo --artifacts $(ART) --k 14

$(DEMO)/knowledge.pkl: $(DEMO)/features.h5 $(DEMO)/labels.h5
	$(RRG) build-knowledge --dataset demo --artifacts $(ART)

demo: setup $(DEMO)/prototypes.pkl $(DEMO)/knowledge.pkl
	@$(RRG) status --dataset demo --artifacts $(ART)
	@echo "look at: $(DEMO)/preview.png (images), $(DEMO)/label_prevalence.png (labels),"
	@echo "         $(DEMO)/prototypes_pca.png (prototypes), $(DEMO)/knowledge.md (retrieved knowledge)"

clean-demo:
	rm -rf $(DEMO)
