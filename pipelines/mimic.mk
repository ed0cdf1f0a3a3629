# MIMIC-CXR-JPG 2.0.0: preprocess, then the shared chain of pipelines/stages.mk.
MIMIC := $(ART)/mimic

mimic_cxr: mimic

mimic: setup
ifndef MIMIC_ROOT
	@echo "MIMIC_ROOT is not set: get MIMIC-CXR-JPG 2.0.0 (and the MIMIC-CXR report .txt files under files/) from PhysioNet and run: make mimic MIMIC_ROOT=/path/to/mimic-cxr-jpg/2.0.0"; exit 1
else
	$(MAKE) --no-print-directory $(addprefix $(MIMIC)/,$(FINAL))
	@$(RRG) status --dataset mimic --artifacts $(ART)

$(MIMIC)/dataset.h5: $(wildcard $(MIMIC_ROOT)/mimic-cxr-2.0.0-split.csv*) pipelines/mimic.toml $(INSTALLED)
	$(RRG) preprocess --dataset mimic --root $(MIMIC_ROOT) --artifacts $(ART)
endif
