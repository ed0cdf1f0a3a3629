"""Benchmark: reports per second from a trained run, batched beam search vs one study at a time.

Decodes the test split of the run's dataset as `evaluate` does (beam 3 with trigram blocking,
the model's length limit) with --batch-size studies per forward and with one study per forward,
interleaved over --repeats rounds, and greedy decoding for reference; also checks that batching
changes no report. Writes bench/results/generate.json.
Usage: python bench/generate.py [--run artifacts/demo/runs/xpronet] [--repeats 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import REPO, machine, write_results

from stages.generation.decoding import Decoding
from stages.training.inference import split_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "artifacts" / "demo" / "runs" / "xpronet")
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not (args.run / "model.pt").exists():
        raise SystemExit(f"{args.run / 'model.pt'} not found: run `make demo` first (or pass --run)")

    settings = {"beam3_batched": Decoding(3, batch_size=args.batch_size), "beam3_one_at_a_time": Decoding(3, batch_size=1),
                "greedy_batched": Decoding(1, batch_size=args.batch_size)}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    reports: dict[str, dict[str, str]] = {}
    for round_ in range(args.repeats):
        for name, decoding in settings.items():
            started = time.perf_counter()
            reports[name] = split_predictions(args.run, args.split, decoding, args.device)
            seconds[name].append(time.perf_counter() - started)
            print(f"round {round_ + 1}: {name:20s} {len(reports[name]) / seconds[name][-1]:7.2f} reports/s")
    studies = len(reports["beam3_batched"])
    per_s = {name: round(studies / statistics.median(times), 2) for name, times in seconds.items()}
    ratio = round(per_s["beam3_batched"] / per_s["beam3_one_at_a_time"], 2)
    identical = reports["beam3_batched"] == reports["beam3_one_at_a_time"]
    results = {
        **machine(), "device": args.device, "run": str(args.run.relative_to(REPO) if args.run.is_absolute()
                                                       and REPO in args.run.parents else args.run),
        "split": args.split, "studies": studies, "batch_size": args.batch_size, "repeats": args.repeats,
        "median_reports_per_s": per_s, "batched_over_one_at_a_time": ratio,
        "batched_reports_identical": identical, "runs_s": seconds,
    }
    print(f"\n{studies} {args.split} studies (median of {args.repeats}; load average {results['load_average_1min']})")
    for name, value in per_s.items():
        print(f"  {name:20s} {value:7.2f} reports/s")
    print(f"  batched / one at a time: {ratio}x; identical reports: {identical}")
    write_results("generate", results)


if __name__ == "__main__":
    main()
