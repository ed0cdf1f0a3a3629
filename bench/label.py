"""Benchmark: report labelling speed of the rule labeler and of a full-size CheXbert.

Rule labeler: the 2,955 IU X-Ray reports of ../shared, pinned to one core, median of 5 runs.
CheXbert: a randomly initialised BERT-base model in the official checkpoint layout (the real
weights are not needed for timing), at batch sizes 1 and 32 on a few dozen reports, median of 3
runs. Prints a table and writes bench/results/label.json.
Usage: python bench/label.py [--repeats 5] [--chexbert-reports 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from common import machine, write_results  # noqa: E402
from stages.labeling.rules import RuleLabeler  # noqa: E402

IU_ANNOTATION = REPO.parent / "shared" / "data" / "iu_xray" / "annotation.json"
GOLD = REPO / "tests" / "data" / "labeler_gold.jsonl"


def median_rate(run, n_reports: int, repeats: int) -> tuple[float, list[float]]:
    """Median reports/s of `repeats` timed calls of run()."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return n_reports / statistics.median(seconds), seconds


def bench_rules(reports: list[str], repeats: int) -> dict:
    """Single-core throughput: the process is pinned to one CPU while it runs."""
    labeler = RuleLabeler()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        labeler.label(reports[:100])  # warm the regex caches
        rate, seconds = median_rate(lambda: labeler.label(reports), len(reports), repeats)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
    return {"reports": len(reports), "runs_s": seconds, "reports_per_s": rate}


def bench_chexbert(reports: list[str], batch_sizes: tuple[int, ...], repeats: int) -> dict:
    from stages.labeling.chexbert import CheXbertLabeler, write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_checkpoint(Path(tmp) / "chexbert_random.pth")
        start = time.perf_counter()
        labeler = CheXbertLabeler.from_checkpoint(path)
        load_s = time.perf_counter() - start
    parameters = sum(p.numel() for p in labeler.model.parameters())
    out = {"parameters": parameters, "load_s": load_s, "reports": len(reports),
           "torch_threads": torch.get_num_threads(), "by_batch_size": {}}
    labeler.label(reports[:4], batch_size=4, progress=False)  # warm-up
    for batch_size in batch_sizes:
        rate, seconds = median_rate(
            lambda b=batch_size: labeler.label(reports, batch_size=b, progress=False), len(reports), repeats
        )
        out["by_batch_size"][str(batch_size)] = {"runs_s": seconds, "reports_per_s": rate}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chexbert-reports", type=int, default=32)
    parser.add_argument("--chexbert-repeats", type=int, default=3)
    args = parser.parse_args()

    results: dict = {**machine(), "torch": torch.__version__}
    rows = []
    if IU_ANNOTATION.is_file():
        annotation = json.loads(IU_ANNOTATION.read_text())
        reports = [item["report"] for split in annotation.values() for item in split]
        results["rules"] = bench_rules(reports, args.repeats)
        rows.append(("rule labeler (1 core)", "-", len(reports), results["rules"]["reports_per_s"]))
    else:
        print(f"skipping the rule labeler benchmark: {IU_ANNOTATION} is not present")
        reports = [json.loads(line)["text"] for line in GOLD.read_text().splitlines()]

    sample = reports[: args.chexbert_reports]
    results["chexbert_random_bert_base"] = bench_chexbert(sample, (1, 32), args.chexbert_repeats)
    threads = results["chexbert_random_bert_base"]["torch_threads"]
    for batch_size, entry in results["chexbert_random_bert_base"]["by_batch_size"].items():
        rows.append((f"CheXbert BERT-base ({threads} threads)", batch_size, len(sample), entry["reports_per_s"]))

    print(f"\n{'labeler':36s} {'batch':>5s} {'reports':>8s} {'reports/s':>10s}")
    for name, batch, n, rate in rows:
        print(f"{name:36s} {batch:>5s} {n:8d} {rate:10.1f}")
    write_results("label", results)


if __name__ == "__main__":
    main()
