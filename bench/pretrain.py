"""Benchmark: PRIOR pretraining, images per second and peak memory per training step.

One optimizer step of `rrg-stage pretrain` (forward through the image encoder and MiniLM, every
active loss, backward, AdamW) on a batch of studies with two views each, in four settings:
`full` (every loss on: global and local alignment, the prototype bank, both reconstructions;
encoder trained, MiniLM frozen, the default), `alignment` (global + local alignment only, the
reference's first stage), `frozen-encoder` (the heads-only baselines of the probe table) and
`text-layers-2` (as full, with MiniLM's top two layers trained too). Each measurement runs in a
fresh process (so its peak resident memory, or peak CUDA memory on a GPU, is its own); the
settings are interleaved over --repeats rounds and the table gives medians and ratios to `full`.
Images are random pixels and sentences real report sentences; the speed does not depend on them.
Writes bench/results/pretrain.json.
Usage: python bench/pretrain.py [--repeats 3] [--steps 6] [--batch-size 16] [--size 128] [--device cpu]
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

SETTINGS = ("full", "alignment", "frozen-encoder", "text-layers-2")
SENTENCES = ["the heart is normal in size", "the lungs are clear", "no pneumothorax or pleural effusion",
             "there is a small right pleural effusion", "mild cardiomegaly", "stable nodule in the left upper lobe",
             "no acute cardiopulmonary abnormality", "left lower lobe atelectasis", "degenerative changes of the spine"]


def measure(setting: str, steps: int, batch_size: int, size: int, device: str) -> dict[str, float]:
    """Images per second and peak memory of `steps` optimizer steps (after 2 warm-up steps)."""
    import torch

    from stages.pretraining.data import PairBatch
    from stages.pretraining.model import Parts, PriorConfig, build_prior

    torch.manual_seed(0)
    options = {"alignment": {"spb": False, "image_reconstruction": False, "report_reconstruction": False},
               "frozen-encoder": {"freeze_encoder": True}, "text-layers-2": {"text_layers": 2}}.get(setting, {})
    config = PriorConfig(input_size=size, **options)
    model = build_prior(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    views = 2
    generator = torch.Generator().manual_seed(0)
    sentences = [[SENTENCES[(i + j) % len(SENTENCES)] for j in range(3 + i % 4)] for i in range(batch_size)]
    batch = PairBatch(torch.arange(batch_size).numpy(), torch.rand(batch_size, views, size, size, generator=generator),
                      torch.ones(batch_size, views, dtype=torch.bool), sentences)
    parts = Parts(spb=True, reconstruction=True, temperature=0.5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch, parts).loss.backward()
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
    return {"images_per_s": steps * batch_size * views / seconds, "seconds_per_step": seconds / steps,
            "peak_mb": peak_mb, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="image side fed to the encoder (the demo's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.batch_size, args.size, args.device)))
        return

    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    for round_ in range(args.repeats):
        for setting in SETTINGS:
            done = subprocess.run([sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
                                   "--batch-size", str(args.batch_size), "--size", str(args.size),
                                   "--device", args.device], capture_output=True, text=True, check=True)
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {setting:15s} {runs[setting][-1]['images_per_s']:.1f} images/s, "
                  f"peak {runs[setting][-1]['peak_mb']:.0f} MB")
    medians = {s: {key: round(statistics.median(r[key] for r in runs[s]), 3) for key in runs[s][0]} for s in SETTINGS}
    ratios = {s: round(medians[s]["images_per_s"] / medians["full"]["images_per_s"], 2) for s in SETTINGS}
    results = {
        **machine(), "device": args.device, "encoder": "efficientnet-lite0", "text": "MiniLM-L6",
        "batch_size_studies": args.batch_size, "views": 2, "image_side": args.size, "steps": args.steps,
        "repeats": args.repeats, "median": medians, "images_per_s_over_full": ratios, "runs": runs,
        "peak_memory": "peak CUDA allocation" if args.device.startswith("cuda") else "peak resident set of the process",
    }
    print(f"\npretraining steps (batch {args.batch_size} studies x 2 views at {args.size} px, median of "
          f"{args.repeats}; load average {results['load_average_1min']})")
    for s in SETTINGS:
        print(f"  {s:15s} {medians[s]['images_per_s']:7.1f} images/s  {medians[s]['seconds_per_step']:6.2f} s/step  "
              f"peak {medians[s]['peak_mb']:7.0f} MB  ({ratios[s]}x full)")
    write_results("pretrain", results)


if __name__ == "__main__":
    main()
