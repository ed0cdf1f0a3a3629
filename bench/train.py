"""Benchmark: report-generator training steps per second, end to end vs on cached features.

The same generator (reference size: d_model 512, 3 layers, XProNet with 14 x 20 prototypes)
trains on IU-shaped batches (2 views, 60 token ids) in two visual modes: `end-to-end` runs and
trains EfficientNet-Lite0 on the pixels of every view (R2Gen's 224 px crop), `cached` reads the
frozen encoder's 7 x 7 patch tokens as features.h5 stores them. Each measurement runs in a fresh
process (so the peak resident memory, or peak CUDA memory on a GPU, is its own); the modes are
interleaved over --repeats rounds and the table gives medians and the cached / end-to-end ratio.
Writes bench/results/train.json.
Usage: python bench/train.py [--repeats 3] [--steps 8] [--batch-size 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from common import machine, write_results

MODES = ("cached", "end-to-end")


def measure(mode: str, steps: int, batch_size: int, size: int, device: str) -> dict[str, float]:
    """Steps per second and peak memory of `steps` optimizer steps (after 2 warm-up steps)."""
    import numpy as np
    import torch

    from stages.generation.config import GeneratorConfig
    from stages.training.data import Batch
    from stages.training.model import VisualSpec, build_model

    torch.manual_seed(0)
    spec = VisualSpec(mode=mode, encoder="efficientnet-lite0", weights=None, input_size=size, image_size=size)
    patches = (size // 32) ** 2
    config = GeneratorConfig(vocab_size=760, model="xpronet")
    prototypes = np.random.default_rng(0).normal(size=(14, 20, config.proto_dim)).astype(np.float32)
    model = build_model(config, spec, prototypes).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, amsgrad=True)
    if mode == "cached":
        views = torch.randn(batch_size, 2, patches, 1280)
    else:
        views = torch.rand(batch_size, 2, size, size)
    targets = torch.randint(1, 760, (batch_size, 60))
    targets[:, 0] = 0
    batch = Batch(np.arange(batch_size), views, torch.ones(batch_size, 2, dtype=torch.bool), targets,
                  torch.ones(batch_size, 60, dtype=torch.bool),
                  (torch.rand(batch_size, 14) > 0.8).float()).to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"steps_per_s": steps / seconds, "studies_per_s": steps * batch_size / seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="image side fed to the encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.batch_size, args.size, args.device)))
        return

    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for round_ in range(args.repeats):
        for mode in MODES:
            done = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(args.steps),
                                   "--batch-size", str(args.batch_size), "--size", str(args.size),
                                   "--device", args.device], capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {mode:10s} {runs[mode][-1]['steps_per_s']:.3f} steps/s, "
                  f"peak {runs[mode][-1]['peak_mb']:.0f} MB")
    medians = {mode: {key: round(statistics.median(r[key] for r in runs[mode]), 3) for key in runs[mode][0]}
               for mode in MODES}
    ratio = round(medians["cached"]["steps_per_s"] / medians["end-to-end"]["steps_per_s"], 2)
    results = {
        **machine(), "device": args.device, "model": "xpronet, d_model 512, 3+3 layers, 14 x 20 prototypes",
        "batch_size": args.batch_size, "views": 2, "image_side": args.size, "tokens": 60, "steps": args.steps,
        "repeats": args.repeats, "median": medians, "cached_over_end_to_end": ratio, "runs": runs,
        "peak_memory": "peak CUDA allocation" if args.device.startswith("cuda") else "peak resident set of the process",
    }
    print(f"\ntraining steps (batch {args.batch_size}, median of {args.repeats}; load average "
          f"{results['load_average_1min']})")
    for mode in MODES:
        print(f"  {mode:10s} {medians[mode]['steps_per_s']:7.3f} steps/s  {medians[mode]['studies_per_s']:7.2f} "
              f"studies/s  peak {medians[mode]['peak_mb']:7.0f} MB")
    print(f"  cached / end-to-end: {ratio}x")
    write_results("train", results)


if __name__ == "__main__":
    main()
