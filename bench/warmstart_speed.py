"""Benchmark: the warm-started model's training steps and report generation against XProNet's, in the same run.

Both models as the demo trained them (runs/warmstart and runs/xpronet: their saved configs and
weights, cached EfficientNet-Lite0 tokens of the demo's studies):
- training: seconds per AdamW step on the same demo training batches of --batch-size studies
  (R2Gen ids for XProNet, the decoder's sub-words of the same reports for warmstart), after 2
  warm-up steps, each measurement in a fresh process, the models interleaved over --repeats rounds;
- generation: reports per second decoding the test split as `evaluate` does (beam 3 with trigram
  blocking, batches of 16, each model's own length limit), interleaved over the same rounds.
Medians and the warmstart / XProNet ratios go to bench/results/warmstart_speed.json.
Usage: python bench/warmstart_speed.py [--artifacts artifacts] [--repeats 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine, write_results

RUNS = ("xpronet", "warmstart")


def measure(run_dir: Path, steps: int, batch_size: int) -> dict[str, float]:
    """Seconds per optimizer step of the run's model on the first demo training batches."""
    import h5py
    import numpy as np
    import torch

    from stages.text.subword import SubwordTokenizer, r2gen_span
    from stages.training.model import load_model
    from stages.training.run import study_source

    base = run_dir.resolve().parents[1]
    saved = load_model(run_dir / "model.pt")
    with h5py.File(base / "labels.h5", "r") as h5:
        labels = h5["binary"][:].astype(np.float32)
    targets = None
    if isinstance(saved.vocab, SubwordTokenizer):
        with h5py.File(base / "dataset.h5", "r") as h5:
            cleaned, length = h5["studies/clean"].asstr()[:], int(h5["studies/token_ids"].shape[1])
        targets = saved.vocab.encode_batch([r2gen_span(text, length) for text in cleaned], saved.config.max_length)
    source = study_source(base, saved.model.visual, labels, enhanced=False, targets=targets)
    rows = source.rows("train")
    model = saved.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for step in range(steps + 2):
        batch = source.batch(rows[step * batch_size:(step + 1) * batch_size], train=True)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    source.close()
    return {"s_per_step": statistics.mean(times[2:]), "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.batch_size)))
        return

    from stages.generation.decoding import Decoding
    from stages.training.inference import split_predictions

    runs = {name: args.artifacts / args.dataset / "runs" / name for name in RUNS}
    for name, run in runs.items():
        if not (run / "model.pt").exists():
            sys.exit(f"{run / 'model.pt'} not found: train it first (make demo-warmstart builds both runs)")
    steps: dict[str, list[float]] = {name: [] for name in RUNS}
    seconds: dict[str, list[float]] = {name: [] for name in RUNS}
    words: dict[str, float] = {}
    parameters: dict[str, int] = {}
    for round_ in range(args.repeats):
        for name, run in runs.items():
            done = subprocess.run([sys.executable, __file__, "--child", str(run), "--steps", str(args.steps),
                                   "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            steps[name].append(measured["s_per_step"])
            parameters[name] = measured["parameters"]
            started = time.perf_counter()
            reports = split_predictions(run, "test", Decoding(3, batch_size=16))
            seconds[name].append(time.perf_counter() - started)
            words[name] = statistics.mean(len(r.split()) for r in reports.values())
            print(f"round {round_ + 1}: {name:10s} {steps[name][-1]:6.2f} s/step, "
                  f"{len(reports) / seconds[name][-1]:6.2f} reports/s")
    studies = len(reports)
    step_median = {name: round(statistics.median(values), 3) for name, values in steps.items()}
    per_s = {name: round(studies / statistics.median(values), 2) for name, values in seconds.items()}
    results = {
        **machine(), "device": "cpu", "dataset": args.dataset, "batch_size": args.batch_size, "steps": args.steps,
        "repeats": args.repeats, "test_studies": studies, "parameters": parameters,
        "median_s_per_step": step_median, "median_reports_per_s": per_s,
        "mean_words_per_report": {name: round(value, 1) for name, value in words.items()},
        "warmstart_over_xpronet": {"step_time": round(step_median["warmstart"] / step_median["xpronet"], 2),
                                   "reports_per_s": round(per_s["warmstart"] / per_s["xpronet"], 2)},
        "runs": {"s_per_step": steps, "generation_s": seconds},
    }
    print(f"\nmedian of {args.repeats} (load average {results['load_average_1min']})")
    for name in RUNS:
        print(f"  {name:10s} {step_median[name]:6.2f} s/step  {per_s[name]:6.2f} reports/s  "
              f"({parameters[name]:,} parameters, {words[name]:.1f} words per report)")
    print(f"  warmstart / xpronet: {results['warmstart_over_xpronet']}")
    write_results("warmstart_speed", results)


if __name__ == "__main__":
    main()
