"""Benchmark: diagnosis-classifier training and ADM mask generation, images per second.

Training: one step of `adm-masks` training (augmentation, forward, class-weighted BCE, backward,
AdamW) on a batch of 128-px images, for every classifier grid (`fine`, the default, `truncated`,
`dilated`, `full`; ratios against `truncated`), and with the default grid once more on contiguous
(NCHW) tensors, as the encoder ran before it switched to channels-last (ratio against it).
Masks, with the default grid: `adm_batch` (probabilities, batched Grad-CAM of all 14 classes, the
aggregate mask) on a batch at once vs the same images one at a time. Every kind runs in each of
--repeats interleaved rounds in one process; the table gives medians and ratios.
Writes bench/results/adm.json.
Usage: python bench/adm.py [--repeats 5] [--batch-size 32] [--size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from common import machine, write_results
from stages.adm.backbone import GRIDS, set_grid
from stages.adm.classifier import Diagnosis, DiagnosisNet, TrainConfig, augment, normalise
from stages.adm.masks import adm_batch
from stages.adm_masks import DEFAULTS
from stages.models.image_encoders import build_image_encoder


def classifier(grid: str, size: int, device: str) -> Diagnosis:
    net = DiagnosisNet(set_grid(build_image_encoder(), grid), sharpness=TrainConfig.sharpness).to(device)
    return Diagnosis(net, "efficientnet-lite0", size, grid, np.full(14, 0.3), np.full(14, 0.3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    b, size = args.batch_size, args.size
    images = rng.integers(0, 256, (b, size, size), dtype=np.uint8)
    targets = torch.as_tensor(rng.random((b, 14)) < 0.2, dtype=torch.float32, device=args.device)
    config = TrainConfig()
    generator = torch.Generator().manual_seed(0)
    models = {grid: classifier(grid, size, args.device) for grid in GRIDS}
    loss_fn = nn.BCEWithLogitsLoss()

    def train_step(diagnosis: Diagnosis, channels_last: bool = True) -> Callable[[], None]:
        net = diagnosis.net
        forward = net if channels_last else (lambda x: net.classify(net.encoder.body(x)))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step() -> None:
            net.train()
            x = torch.as_tensor(images).to(torch.float32).div_(255)[:, None]
            x = normalise(net.encoder, augment(x, generator, config).to(args.device))
            optimizer.zero_grad(set_to_none=True)
            loss_fn(forward(x), targets).backward()
            optimizer.step()
        return step

    masks = models[DEFAULTS["grid"]]
    kinds: dict[str, Callable[[], None]] = {
        **{f"train {grid}": train_step(model) for grid, model in models.items()},
        f"train {DEFAULTS['grid']} contiguous": train_step(models[DEFAULTS["grid"]], channels_last=False),
        "masks batched": lambda: adm_batch(masks, images),
        "masks one at a time": lambda: [adm_batch(masks, images[i:i + 1]) for i in range(b)],
    }
    for fn in kinds.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in kinds}
    for round_ in range(args.repeats):
        for name, fn in kinds.items():
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[name].append(b / (time.perf_counter() - started))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {r[-1]:.1f}/s" for n, r in rates.items()))
    median = {name: round(statistics.median(values), 2) for name, values in rates.items()}
    results = {
        **machine(), "device": args.device, "batch_size": b, "image_size": size, "repeats": args.repeats,
        "classifier": "efficientnet-lite0 (ImageNet), log-sum-exp head, 14 classes",
        "median_images_per_second": median,
        "masks_batched_over_one_at_a_time": round(median["masks batched"] / median["masks one at a time"], 2),
        "mask_grid": DEFAULTS["grid"],
        "channels_last_over_contiguous": round(median[f"train {DEFAULTS['grid']}"]
                                               / median[f"train {DEFAULTS['grid']} contiguous"], 2),
        "train_over_truncated": {grid: round(median[f"train {grid}"] / median["train truncated"], 2) for grid in GRIDS},
        "images_per_second": rates,
    }
    print(f"\nimages per second (batch {b}, {size} px, median of {args.repeats}; "
          f"load average {results['load_average_1min']})")
    for name, value in median.items():
        print(f"  {name:20s} {value:.1f}")
    print(f"  masks batched / one at a time: {results['masks_batched_over_one_at_a_time']}x; "
          f"training speed against the truncated grid: {results['train_over_truncated']}; "
          f"channels-last over contiguous: {results['channels_last_over_contiguous']}x")
    write_results("adm", results)


if __name__ == "__main__":
    main()
