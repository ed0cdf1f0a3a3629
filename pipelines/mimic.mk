# MIMIC-CXR-JPG 2.0.0: preprocess -> label -> extract-features -> kmeans-init, build-knowledge (settings in pipelines/mimic.toml).
MIMIC := $(ART)/mimic

mimic_cxr: mimic

mimic: setup
ifndef MIMIC_ROOT
	@echo "MIMIC_ROOT is not set: get MIMIC-CXR-JPG 2.0.0 (and the MIMIC-CXR report .txt files under files/) from PhysioNet and run: make mimic MIMIC_ROOT=/path/to/mimic-cxr-jpg/2.0.0"; exit 1
else
	$(MAKE) --no-print-directory $(MIMIC)/prototypes.pkl $(MIMIC)/knowledge.pkl
	@$(RRG) status --dataset mimic --artifacts $(ART)

$(MIMIC)/dataset.h5: $(wildcard $(MIMIC_ROOT)/mimic-cxr-2.0.0-split.csv*) pipelines/mimic.toml $(INSTALLED)
	$(RRG) preprocess --dataset mimic --root $(MIMIC_ROOT) --artifacts $(ART)
$(MIMIC)/labels.h5: $(MIMIC)/dataset.h5
	$(RRG) label --dataset mimic --artifacts $(ART)

$(MIMIC)/features.h5: $(MIMIC)/dataset.h5
	$(RRG) extract-features --dataset mimic --artifacts $(ART)

$(MIMIC)/prototypes.pkl: $(MIMIC)/features.h5 $(MIMIC)/labels.h5
	$(RRG) kmeans-init --dataset mimic --artifacts $(ART) --k 14

$(MIMIC)/knowledge.pkl: $(MIMIC)/features.h5 $(MIMIC)/labels.h5
	$(RRG) build-knowledge --dataset mimic --artifacts $(ART)
endif
