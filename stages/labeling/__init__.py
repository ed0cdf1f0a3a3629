"""Report labelling: the 14 CheXpert observations, rule-based and CheXbert labelers."""
