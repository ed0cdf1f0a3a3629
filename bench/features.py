"""Benchmark: feature extraction and k-means prototype initialisation on CPU.

Images per second for each image encoder (inference, original + flipped, as extract-features
runs them), report embeddings per second, and k-means wall time on demo-sized features and on a
synthetic 100k x 2,000 matrix, with the projection for MIMIC-CXR. Prints a table and writes
bench/results/features.json. Usage: python bench/features.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from stages.data.openi import iter_reports_tgz, torchxrayvision_reports
from stages.features.extract import encode_images
from stages.labeling.observations import OBSERVATIONS
from stages.models.image_encoders import build_image_encoder
from stages.models.text_encoders import build_text_encoder
from stages.prototypes.kmeans import init_prototypes

REPO = Path(__file__).resolve().parents[1]
MIMIC_IMAGES, MIMIC_TRAIN_STUDIES = 377_110, 222_758
# label-group memberships per training study on MIMIC (CheXbert, uncertain as positive) is about 1.6
MIMIC_MEMBERSHIPS = 1.6


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def image_rates(repeats: int, batch: int, sizes: tuple[int, ...]) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for name, weights in (("efficientnet-lite0", None), ("resnet101", "random"), ("densenet121", "random")):
        encoder = build_image_encoder(name, weights).eval()
        for size in sizes:
            images = rng.integers(0, 256, (batch, size, size), dtype=np.uint8)
            encode_images(encoder, images, size)  # warm-up
            seconds = median_time(lambda: encode_images(encoder, images, size), repeats)
            out[f"{name}@{size}"] = round(batch / seconds, 1)
    return out


def text_rate(repeats: int, n: int) -> float:
    reports = [r.findings for r in iter_reports_tgz(torchxrayvision_reports()) if r.findings][:n]
    encoder = build_text_encoder("minilm")
    encoder.embed(reports[:32], progress=False)
    return round(n / median_time(lambda: encoder.embed(reports, progress=False), repeats), 1)


def kmeans_seconds(n: int, visual_dim: int, text_dim: int, groups: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    visual = rng.normal(size=(n, visual_dim)).astype(np.float32)
    text = rng.normal(size=(n, text_dim)).astype(np.float32)
    binary = np.zeros((n, groups), np.uint8)
    binary[np.arange(n), rng.integers(0, groups, n)] = 1
    return median_time(lambda: init_prototypes(visual, visual, text, binary, list(OBSERVATIONS[:groups]), groups,
                                               20, 0), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    big = 10_000 if args.quick else 100_000
    results = {
        "images_per_s (batch 16, original + flipped)": image_rates(args.repeats, 16, (128, 224)),
        "reports_per_s minilm": text_rate(args.repeats, 128 if args.quick else 512),
        "kmeans_s demo (280 studies x 1664, 14 groups x 20)": round(kmeans_seconds(280, 1280, 384, 14, args.repeats), 2),
    }
    big_s = kmeans_seconds(big, 1616, 384, 1, 1)
    results[f"kmeans_s synthetic ({big} x 2000, one group, 2 x 10 clusters)"] = round(big_s, 1)
    memberships = MIMIC_TRAIN_STUDIES * MIMIC_MEMBERSHIPS
    results["projected_mimic"] = {
        "extract_features_hours (efficientnet-lite0@224)":
            round(MIMIC_IMAGES / results["images_per_s (batch 16, original + flipped)"]["efficientnet-lite0@224"] / 3600, 1),
        "text_features_hours (minilm)": round(MIMIC_TRAIN_STUDIES / results["reports_per_s minilm"] / 3600, 2),
        "kmeans_init_minutes": round(big_s * memberships / big / 60, 1),
    }
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}
    results["date"] = time.strftime("%Y-%m-%d")
    results["note"] = ("medians of repeated runs in one process; resnet101/densenet121 timed with random weights "
                       "(same cost as trained ones); k-means cost is linear in rows, so the projection scales "
                       f"the {big}-row run to MIMIC's ~{int(memberships):,} group memberships")
    print(json.dumps(results, indent=2))
    if not args.quick:
        out = REPO / "bench" / "results" / "features.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
