"""The EKAGen ablation table: base, + knowledge, + ADM, + 1 and 2 rounds of self-distillation.

Reads the test metrics that `rrg-stage evaluate` wrote for each run of `make demo-ekagen` (every
test study scored, each checkpoint selected on validation BLEU-4), checks that each is current
and validation-selected, and writes one table as CSV and Markdown (with the machine and seed)
to bench/results/ekagen_ablation.{csv,md}.
Usage: python bench/ekagen_ablation.py [--artifacts artifacts] [--dataset demo] [--split test]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, machine
from stages.compare import current
from stages.core.errors import StageError
from stages.evaluation.table import comparison_table, to_markdown

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
    metrics, extra = {}, {}
    for label, name in VARIANTS:
        path = runs / name / f"metrics_{args.split}.json"
        try:
            current(path, args.dataset)
        except StageError as error:
            sys.exit(f"{error}\n(build every run of the table with: make demo-ekagen)")
        run = json.loads((runs / name / "run.json").read_text())
        if not str(run.get("selected_on", "")).startswith("val"):
            sys.exit(f"{runs / name} was not selected on validation; it cannot enter the table")
        metrics[name] = json.loads(path.read_text())
        extra[name] = {"variant": label, "best epoch": run["best_epoch"],
                       "test input": "ADM-enhanced" if run.get("adm_enhanced_input") else "plain"}
    table = comparison_table(metrics)
    for column in ("variant", "best epoch", "test input"):
        table[column] = [extra[name][column] for name in table["run"]]
    table = table[COLUMNS]
    seeds = sorted({m.get("seed") for m in metrics.values()})
    info = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "ekagen_ablation.csv", index=False)
    header = (f"# EKAGen ablation on the {args.dataset} {args.split} split\n\n"
              f"{int(table['studies'].iloc[0])} studies, every one scored; checkpoints selected on validation "
              f"BLEU-4; beam 3 with trigram blocking; CE by the `{metrics[VARIANTS[0][1]].get('labeler')}` labeler; "
              f"test-time labels from the diagnosis classifier (no oracle input); seed {', '.join(map(str, seeds))}.\n"
              f"Machine: {info['platform']}, {info['cpu_count']} CPUs, {info['date']}.\n\n")
    (RESULTS / "ekagen_ablation.md").write_text(header + to_markdown(table))
    print(header + to_markdown(table))
    print(f"wrote {RESULTS / 'ekagen_ablation.csv'} and {RESULTS / 'ekagen_ablation.md'}")


if __name__ == "__main__":
    main()
