"""Evaluation under one protocol: R2Gen-style references, NLG and clinical-efficacy metrics,
baselines, a static report viewer and the comparison table across runs."""
