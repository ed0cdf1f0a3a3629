"""PRIOR's downstream table: the pretrained encoder against the ImageNet-only and random encoders.

Reads probe_<split>.json of pretraining runs (by default the three `make demo-prior` builds:
pretrain/random and pretrain/imagenet train the same heads and text side with the encoder frozen
at random or ImageNet weights, pretrain/prior trains everything from ImageNet weights), checks
that each is current, and writes bench/results/prior.csv / .md with one row per run: linear-probe
and zero-shot macro-AUROC over the 14 observations, and image-to-report Recall@1/5/10.
The linear probe reads the encoder alone (the frozen encoders' rows are plain ImageNet / random
features); zero-shot and retrieval need the projection heads, which every row trained with the
same objective, data and budget. Brackets are 95% bootstrap intervals over the split's studies;
the "vs baseline" columns are paired differences against the baseline run of the row's seed (the
same resampled studies for both), which is what "beats the ImageNet encoder" has to clear.
Usage: python bench/prior.py [--artifacts artifacts] [--dataset demo] [--split test] [--runs NAME ...]
       [--baselines NAME ...]
       (the README's table adds imagenet-seed1, prior-seed1 and global-only to make demo-prior's runs, after
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
from stages.evaluation.bootstrap import format_interval
from stages.pretraining.probe import compare_probes

DEFAULT_RUNS = ("random", "imagenet", "prior")


def load(run_dir: Path, split: str, dataset: str) -> tuple[dict, dict]:
    """A run's probe results and run.json, the probe checked to be current."""
    path = run_dir / f"probe_{split}.json"
    try:
        check_input(path, dataset)
    except StageError as error:
        sys.exit(f"{error}\n(build it with: rrg-stage probe --run {run_dir} --split {split}, or make demo-prior)")
    probe = json.loads(path.read_text())
    if "study_ids" not in probe or "label_ceiling" not in probe["retrieval"]:
        sys.exit(f"{path} predates the per-study results and the label ceiling; rerun: rrg-stage probe --run "
                 f"{run_dir} --split {split} --force")
    return probe, json.loads((run_dir / "run.json").read_text())


def span(value: float | None, bounds: list[float] | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:{'+.3f' if signed else '.3f'}}" + ("" if bounds is None else f" {format_interval(bounds, signed)}")


def row(name: str, probe: dict, run: dict, baseline: tuple[str, dict] | None) -> dict:
    linear, zero, found = probe["linear_probe"], probe["zero_shot"], probe["retrieval"]
    out = {"run": name, "encoder": run["image_encoder"], "init": run["init"],
           "encoder trained": not run["freeze_encoder"], "losses": "+".join(run["losses"]),
           "seed": run["seed"], "training pairs": run["pairs"]["train"], "epochs": run["epochs"],
           "best epoch": run["best_epoch"], "studies": probe["studies"],
           "linear probe macro-AUROC": span(linear["macro_auroc"], linear.get("macro_interval")),
           "probe C": linear["C"], "zero-shot macro-AUROC": zero["macro_auroc"], "R@1": found["recall@1"],
           "R@5": span(found["recall@5"], found.get("intervals", {}).get("recall@5")),
           "R@10": found["recall@10"], "reports": found["reports"], "classes": len(linear["macro_over"])}
    if baseline is not None and baseline[0] != name:
        gap = compare_probes(probe, baseline[1])
        out.update({"vs baseline": baseline[0],
                    "linear probe vs baseline": span(gap["linear_probe"], gap["linear_probe_interval"], True),
                    "R@5 vs baseline": span(gap["recall@5"], gap["recall@5_interval"], True)})
    return out


def supervised_reference(dataset_dir: Path, probe: dict) -> str:
    """The diagnosis classifier's test macro-AUROC over the probe's classes: what the labels buy end to end.

    Not a linear probe (adm-masks fine-tunes the ImageNet backbone, on its own finer grid, with a
    classification head on the training labels), so it is stated beside the table as the headroom
    that labelled training finds above ImageNet features, not as a row.
    """
    path = dataset_dir / "adm_metrics.json"
    if probe["split"] != "test" or not path.exists():
        return ""
    per_class = json.loads(path.read_text())["classifier"]["per_class"]
    positives = probe["linear_probe"]["positives"]
    if any(per_class[name]["test_positive_studies"] != positives[name] for name in positives):
        return f" ({path} was scored on other labels than the probes; rerun rrg-stage adm-masks for a reference.)"
    used = probe["linear_probe"]["macro_over"]
    macro = sum(per_class[name]["auroc_study"] for name in used) / len(used)
    return (f" For reference, the diagnosis classifier of adm-masks (the ImageNet backbone fine-tuned end to end "
            f"on the training studies' labels; {path.name}) scores a test macro-AUROC of {macro:.3f} over the "
            f"same classes.")


def _key(run: dict) -> tuple[int, int]:
    """What a row and its baseline share: the seed and the extra pretraining pairs."""
    return run["seed"], run.get("extra_data", {}).get("train_pairs", 0)


def baseline_for(run: dict, baselines: dict[str, tuple[dict, dict]]) -> tuple[str, dict] | None:
    """The baseline with the row's seed and pairs, and its objective (the same losses) where one was trained:
    retrieval and zero-shot go through heads that the objective shapes, so a row is compared with the frozen
    encoder under the same losses when that run exists."""
    same = [(name, probe, other) for name, (probe, other) in baselines.items() if _key(other) == _key(run)]
    for name, probe, other in same:
        if other["losses"] == run["losses"]:
            return name, probe
    return (same[0][0], same[0][1]) if same else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="pretraining runs, in table order")
    parser.add_argument("--baselines", nargs="*", default=["imagenet"],
                        help="runs each row is compared with: the one with the row's seed, extra pairs and, where "
                             "there is one, losses (none: no comparison)")
    args = parser.parse_args()
    loaded = {name: load(args.artifacts / args.dataset / "pretrain" / name, args.split, args.dataset)
              for name in dict.fromkeys([*args.runs, *args.baselines])}
    baselines = {name: loaded[name] for name in args.baselines}
    table = pd.DataFrame([row(name, *loaded[name], baseline_for(loaded[name][1], baselines)) for name in args.runs])
    found = loaded[args.runs[0]][0]
    m = machine()
    header = (f"# PRIOR pretraining: downstream scores on {args.dataset} {args.split} ({table['studies'].iloc[0]} "
              f"studies)\n\nLabels: labels.h5 (the project's rule labeler). Macro-AUROC over the classes with at "
              f"least {found['min_positives']} positives in the split ({', '.join(found['linear_probe']['macro_over'])}"
              f"). Linear probe: logistic regression per class on the encoder's pooled features (mean over a "
              f"study's views), C chosen on validation. Zero-shot: cos(study, 'there is X') - cos(study, 'no X'). "
              f"Recall@K: image-to-report over the split's {found['retrieval']['reports']} distinct reports "
              f"(chance R@5 {found['retrieval']['chance@5']:.3f}; a ranking that knew each study's 14 labels "
              f"exactly and nothing else: R@5 {found['retrieval']['label_ceiling']['recall@5']:.3f}). "
              f"Training pairs: the dataset's own training studies plus those of --extra-data. Rows with the "
              f"encoder frozen trained the same heads and text side with the same objective and budget. Brackets: "
              f"95% bootstrap intervals over the studies; 'vs baseline': the paired difference from the baseline run "
              f"with the row's seed and training pairs on the same resampled studies."
              f"{supervised_reference(args.artifacts / args.dataset, found)} {m['date']}, {m['cpu_count']} CPUs.\n\n")
    write_table("prior", header, table)


if __name__ == "__main__":
    main()
