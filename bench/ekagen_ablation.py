"""The EKAGen ablation table: base, + knowledge, + ADM, + 1 and 2 rounds of self-distillation.

Reads the test metrics that `rrg-stage evaluate` wrote for each run of `make demo-ekagen` (every
test study scored, each checkpoint selected on validation), checks that each is current
and validation-selected, and writes one table as CSV and Markdown (with the machine and seed)
to bench/results/ekagen_ablation.{csv,md}.
Usage: python bench/ekagen_ablation.py [--artifacts artifacts] [--dataset demo] [--split test]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import evaluated_run, machine, write_table
from stages.evaluation.table import comparison_table

# (row label, run name) in the order the components are added
VARIANTS = [("base", "base"), ("+ knowledge", "ekagen-knowledge"), ("+ knowledge + ADM (EKAGen)", "ekagen"),
            ("+ distillation, 1 round", "ekagen-gid1"), ("+ distillation, 2 rounds", "ekagen-gid2")]
COLUMNS = ["variant", "run", "studies", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr",
           "CE micro F1", "CE macro F1", "CE example F1", "best epoch", "test input"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    runs = args.artifacts / args.dataset / "runs"
    metrics, extra, selected = {}, {}, set()
    for label, name in VARIANTS:
        metrics[name], run = evaluated_run(runs / name, args.split, args.dataset, "make demo-ekagen")
        selected.add(run["selected_on"])
        extra[name] = {"variant": label, "best epoch": run["best_epoch"],
                       "test input": "ADM-enhanced" if run.get("adm_enhanced_input") else "plain"}
    table = comparison_table(metrics)
    for column in ("variant", "best epoch", "test input"):
        table[column] = [extra[name][column] for name in table["run"]]
    table = table[COLUMNS]
    seeds = sorted({m.get("seed") for m in metrics.values()})
    info = machine()
    header = (f"# EKAGen ablation on the {args.dataset} {args.split} split\n\n"
              f"{int(table['studies'].iloc[0])} studies, every one scored; checkpoints selected on "
              f"{' / '.join(sorted(selected))}; beam 3 with trigram blocking; "
              f"CE by the `{metrics[VARIANTS[0][1]].get('labeler')}` labeler; "
              f"test-time labels from the diagnosis classifier (no oracle input); seed {', '.join(map(str, seeds))}.\n"
              f"Machine: {info['platform']}, {info['cpu_count']} CPUs, {info['date']}.\n\n")
    write_table("ekagen_ablation", header, table)


if __name__ == "__main__":
    main()
