# The demo chain: make-demo -> preprocess (settings in pipelines/demo.toml).
DEMO := $(ART)/demo

$(DEMO)/raw/annotation.json: $(INSTALLED) pipelines/demo.toml
	$(RRG) make-demo --out $(DEMO)/raw --preview $(DEMO)/preview.png

$(DEMO)/dataset.h5: $(DEMO)/raw/annotation.json pipelines/demo.toml
	$(RRG) preprocess --dataset demo --root $(DEMO)/raw --artifacts $(ART)

demo: setup $(DEMO)/dataset.h5
	@$(RRG) status --dataset demo --artifacts $(ART)
	@echo "demo contact sheet: $(DEMO)/preview.png"

clean-demo:
	rm -rf $(DEMO)
