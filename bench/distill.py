"""Benchmark: a self-distillation step (student step + frozen teacher forward) vs a plain training step.

The same EKAGen generator (reference size: d_model 256, 6+6 layers, d_ff 2048, 14 x 8 knowledge
entries of 384 features) trains on IU-shaped batches of cached tokens (2 views x 7 x 7 patches,
60 token ids). A plain step is forward + backward + AdamW; a distillation step adds the frozen
teacher's forward on the enhanced tokens and the KL term. The two kinds are interleaved over
--repeats rounds in one process; the table gives median seconds per step and their ratio, and
the teacher forward alone. Writes bench/results/distill.json.
Usage: python bench/distill.py [--repeats 5] [--steps 5] [--batch-size 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from common import machine, write_results
from stages.generation.config import GeneratorConfig
from stages.training.data import Batch
from stages.training.distill import Teacher
from stages.training.model import VisualSpec, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GeneratorConfig(vocab_size=760, model="ekagen", d_model=256, layers=args.layers, d_ff=args.d_ff)
    spec = VisualSpec(mode="cached", encoder="efficientnet-lite0", weights=None, input_size=224, image_size=224)
    knowledge = np.random.default_rng(0).normal(size=(14, 8, 384)).astype(np.float32)
    student = build_model(config, spec, knowledge=knowledge).to(args.device).train()
    teacher = Teacher(build_model(config, spec, knowledge=knowledge).to(args.device))
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=1e-4)
    b = args.batch_size
    targets = torch.randint(1, 760, (b, 60))
    targets[:, 0] = 0
    batch = Batch(np.arange(b), torch.randn(b, 2, 49, 1280), torch.ones(b, 2, dtype=torch.bool), targets,
                  torch.ones(b, 60, dtype=torch.bool), (torch.rand(b, 14) > 0.8).float(),
                  teacher_views=torch.randn(b, 2, 49, 1280)).to(args.device)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        student(batch).loss.backward()
        optimizer.step()

    def distil() -> None:
        optimizer.zero_grad(set_to_none=True)
        teacher.distil(student(batch), batch).loss.backward()
        optimizer.step()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher.model(replace(batch, views=batch.teacher_views))

    kinds = {"plain step": plain, "distillation step": distil, "teacher forward": teacher_forward}
    for fn in kinds.values():  # warm-up
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in kinds}
    for round_ in range(args.repeats):
        for name, fn in kinds.items():
            sync()
            started = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync()
            seconds[name].append((time.perf_counter() - started) / args.steps)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.3f} s" for n, s in seconds.items()))
    median = {name: round(statistics.median(values), 4) for name, values in seconds.items()}
    results = {
        **machine(), "device": args.device, "batch_size": b, "views": 2, "patches": 49, "tokens": 60,
        "model": f"ekagen, d_model 256, {args.layers}+{args.layers} layers, d_ff {args.d_ff}, 14 x 8 knowledge",
        "steps": args.steps, "repeats": args.repeats, "median_seconds": median,
        "distill_over_plain": round(median["distillation step"] / median["plain step"], 2),
        "teacher_forward_over_plain": round(median["teacher forward"] / median["plain step"], 2), "seconds": seconds,
    }
    print(f"\nseconds per step (batch {b}, median of {args.repeats}; load average {results['load_average_1min']})")
    for name, value in median.items():
        print(f"  {name:18s} {value:.4f}")
    print(f"  distillation / plain step: {results['distill_over_plain']}x; teacher forward / plain step: "
          f"{results['teacher_forward_over_plain']}x")
    write_results("distill", results)


if __name__ == "__main__":
    main()
