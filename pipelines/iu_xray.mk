# IU X-Ray from an R2Gen-layout folder: preprocess, then the shared chain of pipelines/stages.mk.
IU := $(ART)/iu_xray

iu_xray: setup
ifndef IU_XRAY_ROOT
	@echo "IU_XRAY_ROOT is not set: download IU X-Ray in R2Gen layout (annotation.json + images/, e.g. the iu_xray folder R2Gen links) and run: make iu_xray IU_XRAY_ROOT=/path/to/iu_xray"; exit 1
else
	$(MAKE) --no-print-directory $(addprefix $(IU)/,$(FINAL))
	@$(RRG) status --dataset iu_xray --artifacts $(ART)

$(IU_XRAY_ROOT)/annotation.json:
	@echo "$@ not found: IU_XRAY_ROOT must be an R2Gen-layout folder (annotation.json + images/)"; exit 1

$(IU)/dataset.h5: $(IU_XRAY_ROOT)/annotation.json pipelines/iu_xray.toml $(INSTALLED)
	$(RRG) preprocess --dataset iu_xray --root $(IU_XRAY_ROOT) --artifacts $(ART)
endif
