# The stages after preprocessing are the same for every dataset: `%` is the dataset name and each
# stage reads its defaults from pipelines/<dataset>.toml. Each per-dataset fragment only says how
# its dataset.h5 is built and which final artifacts its target wants.
FINAL := prototypes.pkl knowledge.pkl adm.h5 results_test.md
# extra options for two stages that a larger variant of a dataset needs (make demo-iu-scale sets them)
MAKE_DEMO_ARGS ?=
ADM_ARGS ?=

$(ART)/%/labels.h5: $(ART)/%/dataset.h5
	$(RRG) label --dataset $* --artifacts $(ART)

$(ART)/%/features.h5: $(ART)/%/dataset.h5
	$(RRG) extract-features --dataset $* --artifacts $(ART)

$(ART)/%/prototypes.pkl: $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) kmeans-init --dataset $* --artifacts $(ART) --k 14

$(ART)/%/knowledge.pkl: $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) build-knowledge --dataset $* --artifacts $(ART)

$(ART)/%/adm.h5: $(ART)/%/dataset.h5 $(ART)/%/labels.h5
	$(RRG) adm-masks --dataset $* --artifacts $(ART) $(ADM_ARGS)

# report generators: the plain Transformer and XProNet (conditioned on the diagnosis classifier's labels)
$(ART)/%/runs/base/model.pt: $(ART)/%/dataset.h5 $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) train --dataset $* --artifacts $(ART) --model base

$(ART)/%/runs/xpronet/model.pt: $(ART)/%/features.h5 $(ART)/%/labels.h5 $(ART)/%/prototypes.pkl $(ART)/%/adm.h5
	$(RRG) train --dataset $* --artifacts $(ART) --model xpronet

# EKAGen (`make demo-ekagen`): ADM-enhanced image tokens, then the ablation's runs: + knowledge on
# plain images, + ADM (EKAGen itself, the first teacher), and two rounds of self-distillation
$(ART)/%/features_adm.h5: $(ART)/%/dataset.h5 $(ART)/%/adm.h5
	$(RRG) extract-features --dataset $* --artifacts $(ART) --adm

$(ART)/%/runs/ekagen-knowledge/model.pt: $(ART)/%/features.h5 $(ART)/%/labels.h5 $(ART)/%/knowledge.pkl $(ART)/%/adm.h5
	$(RRG) train --dataset $* --artifacts $(ART) --model ekagen --no-adm --name ekagen-knowledge

$(ART)/%/runs/ekagen/model.pt: $(ART)/%/features_adm.h5 $(ART)/%/labels.h5 $(ART)/%/knowledge.pkl $(ART)/%/adm.h5
	$(RRG) train --dataset $* --artifacts $(ART) --model ekagen

# one command makes both rounds (a pattern rule with two targets is one recipe in GNU make)
$(ART)/%/runs/ekagen-gid1/model.pt $(ART)/%/runs/ekagen-gid2/model.pt: $(ART)/%/runs/ekagen/model.pt
	$(RRG) distill --dataset $* --artifacts $(ART) --teacher ekagen --rounds 2

# the warm-started encoder-decoder (`make demo-warmstart`): MiniLM-L6's weights in the decoder, and the same
# architecture from random weights (the warm-start ablation)
$(ART)/%/runs/warmstart/model.pt: $(ART)/%/dataset.h5 $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) train --dataset $* --artifacts $(ART) --model warmstart

$(ART)/%/runs/warmstart-random/model.pt: $(ART)/%/dataset.h5 $(ART)/%/features.h5 $(ART)/%/labels.h5
	$(RRG) train --dataset $* --artifacts $(ART) --model warmstart --init random --name warmstart-random

# PRIOR pretraining (`make demo-prior`): the pretrained encoder, and the same heads and text side trained on a
# frozen ImageNet or random encoder (the baselines of the probe table); each run is scored by `probe`
$(ART)/%/pretrain/prior/encoder.pt: $(ART)/%/dataset.h5
	$(RRG) pretrain --dataset $* --artifacts $(ART)

$(ART)/%/pretrain/imagenet/encoder.pt: $(ART)/%/dataset.h5
	$(RRG) pretrain --dataset $* --artifacts $(ART) --freeze-encoder --name imagenet

$(ART)/%/pretrain/random/encoder.pt: $(ART)/%/dataset.h5
	$(RRG) pretrain --dataset $* --artifacts $(ART) --freeze-encoder --weights random --name random

$(ART)/%/probe_test.json: $(ART)/%/encoder.pt
	$(RRG) probe --run $(ART)/$*

$(ART)/%/metrics_test.json: $(ART)/%/model.pt
	$(RRG) evaluate --run $(ART)/$*

# both baselines (most frequent report, nearest neighbour by image feature), scored on test
$(ART)/%/runs/nearest-neighbour/metrics_test.json: $(ART)/%/dataset.h5 $(ART)/%/features.h5
	$(RRG) baselines --dataset $* --artifacts $(ART)

$(ART)/%/results_test.md: $(ART)/%/runs/nearest-neighbour/metrics_test.json $(ART)/%/runs/base/metrics_test.json \
                          $(ART)/%/runs/xpronet/metrics_test.json
	$(RRG) compare --dataset $* --artifacts $(ART) --split test --baseline nearest-neighbour

# keep every intermediate artifact (make would otherwise delete files it built through a chain)
.SECONDARY:
