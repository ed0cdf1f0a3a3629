"""PRIOR's downstream table: the pretrained encoder against the ImageNet-only and random encoders.

Reads probe_<split>.json of pretraining runs (by default the three `make demo-prior` builds:
pretrain/random and pretrain/imagenet train the same heads and text side with the encoder frozen
at random or ImageNet weights, pretrain/prior trains everything from ImageNet weights), checks
that each is current, and writes bench/results/prior.csv / .md with one row per run: linear-probe
and zero-shot macro-AUROC over the 14 observations, and image-to-report Recall@1/5/10.
The linear probe reads the encoder alone (the frozen encoders' rows are plain ImageNet / random
features); zero-shot and retrieval need the projection heads, which every row trained with the
same objective, data and budget.
Usage: python bench/prior.py [--artifacts artifacts] [--dataset demo] [--split test] [--runs NAME ...]
       (the README's table: --runs random imagenet imagenet-seed1 prior prior-seed1 global-only, after
       `rrg-stage pretrain --seed 1 --name prior-seed1`, `... --freeze-encoder --seed 1 --name imagenet-seed1`,
       `... --no-local --no-spb --no-image-reconstruction --no-report-reconstruction --name global-only` and
       `rrg-stage probe --run` of each)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from common import machine, write_table
from stages.core.artifacts import check_input
from stages.core.errors import StageError

DEFAULT_RUNS = ("random", "imagenet", "prior")


def row(run_dir: Path, split: str, dataset: str) -> dict:
    path = run_dir / f"probe_{split}.json"
    try:
        check_input(path, dataset)
    except StageError as error:
        sys.exit(f"{error}\n(build it with: rrg-stage probe --run {run_dir} --split {split}, or make demo-prior)")
    probe = json.loads(path.read_text())
    run = json.loads((run_dir / "run.json").read_text())
    linear, zero, found = probe["linear_probe"], probe["zero_shot"], probe["retrieval"]
    return {"run": run_dir.name, "encoder": run["image_encoder"], "init": run["init"],
            "encoder trained": not run["freeze_encoder"], "losses": "+".join(run["losses"]),
            "seed": run["seed"], "epochs": run["epochs"], "best epoch": run["best_epoch"], "studies": probe["studies"],
            "linear probe macro-AUROC": linear["macro_auroc"], "probe C": linear["C"],
            "zero-shot macro-AUROC": zero["macro_auroc"], "R@1": found["recall@1"], "R@5": found["recall@5"],
            "R@10": found["recall@10"], "reports": found["reports"], "classes": len(linear["macro_over"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="pretraining runs, in table order")
    args = parser.parse_args()
    table = pd.DataFrame([row(args.artifacts / args.dataset / "pretrain" / name, args.split, args.dataset)
                          for name in args.runs])
    found = json.loads((args.artifacts / args.dataset / "pretrain" / args.runs[0] / f"probe_{args.split}.json")
                       .read_text())
    m = machine()
    header = (f"# PRIOR pretraining: downstream scores on {args.dataset} {args.split} ({table['studies'].iloc[0]} "
              f"studies)\n\nLabels: labels.h5 (the project's rule labeler). Macro-AUROC over the classes with at "
              f"least {found['min_positives']} positives in the split ({', '.join(found['linear_probe']['macro_over'])}"
              f"). Linear probe: logistic regression per class on the encoder's pooled features (mean over a "
              f"study's views), C chosen on validation. Zero-shot: cos(study, 'there is X') - cos(study, 'no X'). "
              f"Recall@K: image-to-report over the split's {found['retrieval']['reports']} distinct reports "
              f"(chance R@5 {found['retrieval']['chance@5']:.3f}). Rows with the encoder frozen trained the same "
              f"heads and text side with the same objective and budget. {m['date']}, {m['cpu_count']} CPUs.\n\n")
    write_table("prior", header, table)


if __name__ == "__main__":
    main()
