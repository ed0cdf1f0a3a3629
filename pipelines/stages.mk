# The stages after preprocessing are the same for every dataset: `%` is the dataset name and each
# stage reads its defaults from pipelines/<dataset>.toml. Each per-dataset fragment only says how
# its dataset.h5 is built and which final artifacts its target wants.
FINAL := prototypes.pkl knowledge.pkl adm.h5

$(ART)/%/labels.h5: $(ART)/%/dataset.h5
	$(RRG) label --dataset $* --artifacts $(ART)

$(ART)/%/features.h5: $(ART)/%/dataset.h5
	$(RRG) extract-features --dataset $* --artifacts $(ART)

$(ART)/%/prototypes.pkl: $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) kmeans-init --dataset $* --artifacts $(ART) --k 14

$(ART)/%/knowledge.pkl: $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) build-knowledge --dataset $* --artifacts $(ART)

$(ART)/%/adm.h5: $(ART)/%/dataset.h5 $(ART)/%/labels.h5
	$(RRG) adm-masks --dataset $* --artifacts $(ART)

# keep every intermediate artifact (make would otherwise delete files it built through a chain)
.SECONDARY:
