"""Benchmark: beam search against longer decodings (length penalty, MBR) of one trained checkpoint.

Beam search finds short reports (the most probable report is shorter than a typical one), and
BLEU's brevity penalty charges for it. This decodes the validation and test splits of a trained
run with beam 3 (the protocol), with beam 3 ranking by log-probability / length ** each of
--length-penalties, and with MBR over --samples sampled reports for each of --seeds, scores each as
`evaluate` does (rules labeler), and prints BLEU-4, CE micro-F1, words per report and reports per
second, with paired bootstrap differences from a baseline run (default: the nearest neighbour).
The checkpoint stays the one the run selected; `train --mbr-samples` / `--length-penalty` select
one under that decoding instead. Writes bench/results/mbr_<run>.json and mbr_<run>.md.
Usage: python bench/mbr.py [--artifacts artifacts] [--run xpronet] [--samples 16] [--seeds 0 1 2 3]
       [--length-penalties 1.5 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import REPO, RESULTS, machine, write_results

from stages.evaluation.bootstrap import StudyScores, format_interval, paired_differences
from stages.evaluation.clinical import load_labeler
from stages.evaluation.nlg import NlgScorer
from stages.evaluation.references import from_dataset
from stages.evaluation.runs import read_predictions
from stages.evaluation.score import evaluate
from stages.generation.decoding import Decoding
from stages.training.inference import split_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--run", default="xpronet", help="run name under ARTIFACTS/<dataset>/runs/")
    parser.add_argument("--baseline", default="nearest-neighbour", help="run whose predictions_<split>.csv to compare with")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--length-penalties", type=float, nargs="*", default=[1.5, 3.0])
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    args = parser.parse_args()
    base = args.artifacts / args.dataset
    run_dir = base / "runs" / args.run
    for needed in (run_dir / "model.pt", base / "runs" / args.baseline):
        if not needed.exists():
            raise SystemExit(f"{needed} not found: run `make demo` first (or pass --artifacts / --run / --baseline)")
    style = json.loads((base / "dataset.h5.meta.json").read_text())["options"]["clean_style"]
    labeler, labeler_name = load_labeler("rules")
    settings = {"beam 3": [Decoding(3)]}
    settings.update({f"beam 3, length penalty {lp:g}": [Decoding(3, length_penalty=lp)] for lp in args.length_penalties})
    settings[f"MBR {args.samples}"] = [Decoding(mbr_samples=args.samples, mbr_temperature=args.temperature, seed=seed)
                                       for seed in args.seeds]
    rows = []
    with NlgScorer() as scorer:
        for split in args.splits:
            references = from_dataset(base / "dataset.h5", base / "vocab.json", split, style)

            def scored(predictions: dict[str, str]) -> tuple[dict, StudyScores]:
                result = evaluate(predictions, references, labeler, labeler_name, scorer=scorer)
                return result.metrics, StudyScores.of(result.ids, result.references, result.generated,
                                                      result.reference_labels, result.generated_labels)

            baseline = scored(read_predictions(base / "runs" / args.baseline / f"predictions_{split}.csv"))[1]
            for name, decodings in settings.items():
                for decoding in decodings:
                    started = time.perf_counter()
                    predictions = split_predictions(run_dir, split, decoding)
                    seconds = time.perf_counter() - started
                    metrics, scores = scored(predictions)
                    gap = paired_differences(scores, baseline)
                    rows.append({"split": split, "decoding": name, "seed": decoding.seed if decoding.mbr_samples else None,
                                 "bleu4": metrics["nlg"]["BLEU_4"], "ce_micro_f1": metrics["ce"]["micro"]["f1"],
                                 "words": statistics.mean(len(text.split()) for text in predictions.values()),
                                 "reports_per_s": len(predictions) / seconds,
                                 "bleu4_vs_baseline": gap["BLEU_4"], "ce_micro_f1_vs_baseline": gap["CE_micro_F1"]})
                    row = rows[-1]
                    print(f"{split:5s} {name:26s} seed {str(row['seed']):4s} BLEU-4 {row['bleu4']:.3f} "
                          f"({format_interval(gap['BLEU_4']['interval'], signed=True)} vs {args.baseline}), CE micro-F1 "
                          f"{row['ce_micro_f1']:.3f}, {row['words']:.1f} words, {row['reports_per_s']:.1f} reports/s")
    results = {**machine(), "run": str(run_dir.relative_to(args.artifacts)), "baseline": args.baseline,
               "samples": args.samples, "temperature": args.temperature, "seeds": args.seeds,
               "length_penalties": args.length_penalties,
               "labeler": labeler_name, "rows": rows}
    write_results(f"mbr_{args.run}", results)
    table(results, RESULTS / f"mbr_{args.run}.md")


def table(results: dict, path: Path) -> None:
    lines = [f"Decoding `{results['run']}` (its validation-selected checkpoint), paired differences from "
             f"{results['baseline']} on the same studies; rules labeler; {results['date']}.", "",
             "| split | decoding | seed | BLEU-4 | vs baseline [95%] | CE micro-F1 | vs baseline [95%] | words |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        b, c = row["bleu4_vs_baseline"], row["ce_micro_f1_vs_baseline"]
        lines.append(f"| {row['split']} | {row['decoding']} | {'' if row['seed'] is None else row['seed']} | "
                     f"{row['bleu4']:.3f} | {b['difference']:+.3f} {format_interval(b['interval'], signed=True)} | "
                     f"{row['ce_micro_f1']:.3f} | {c['difference']:+.3f} {format_interval(c['interval'], signed=True)} | "
                     f"{row['words']:.1f} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
