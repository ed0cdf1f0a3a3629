"""Benchmark: decoding + resizing real 2000x2000 chest X-ray JPEGs through `rrg-stage preprocess`.

Builds an R2Gen-layout folder whose images are the 16 real radiographs of ../shared/data/real_cxr
repeated, then runs the real preprocess stage in fresh processes: serially and with 2 workers
(same run, same files), at N and 4N images for peak memory. Prints a table and writes
bench/results/preprocess.json. Usage: python bench/preprocess.py [--n 320] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_cxr"
MIMIC_IMAGES = 377_110

_RUN = """
import resource, sys, time
from click.testing import CliRunner
import stages.preprocess as stage
phase = []
write_images = stage.write_images
def timed(*args, **kwargs):
    start = time.perf_counter()
    handle = write_images(*args, **kwargs)
    phase.append(time.perf_counter() - start)
    return handle
stage.write_images = timed
start = time.perf_counter()
result = CliRunner().invoke(stage.command, sys.argv[1:], catch_exceptions=False)
elapsed = time.perf_counter() - start
assert result.exit_code == 0, result.output
print(elapsed, phase[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_dataset(root: Path, n_images: int) -> Path:
    """An R2Gen folder of n_images/2 two-view studies whose images link to the real JPEGs."""
    files = sorted(REAL.glob("*.jpg"))
    annotation = {"train": [], "val": [], "test": []}
    for s in range(n_images // 2):
        study = f"S{s:05d}"
        (root / "images" / study).mkdir(parents=True)
        for v in range(2):
            (root / "images" / study / f"{v}.jpg").symlink_to(files[(2 * s + v) % len(files)])
        annotation["train"].append({"id": study, "report": "The lungs are clear.", "split": "train",
                                    "image_path": [f"{study}/0.jpg", f"{study}/1.jpg"]})
    (root / "annotation.json").write_text(json.dumps(annotation))
    return root


def run_stage(root: Path, workers: int, size: int) -> tuple[float, float, float]:
    """(stage seconds, image-phase seconds, peak RSS of the writer process in MiB) of one fresh run."""
    with tempfile.TemporaryDirectory() as artifacts:
        args = ["--dataset", "iu_xray", "--root", str(root), "--artifacts", artifacts, "--workers", str(workers),
                "--image-size", str(size)]
        out = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        seconds, phase, rss_kb = out.stdout.split()[-3:]
        return float(seconds), float(phase), int(rss_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=640, help="images in the base run (N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"skipped: {REAL} not found (the benchmark uses the real radiographs in ../shared)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        small = make_dataset(Path(tmp) / "n", args.n)
        large = make_dataset(Path(tmp) / "4n", 4 * args.n)
        serial, parallel = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            serial.append(run_stage(small, 1, args.size))
            parallel.append(run_stage(small, 2, args.size))
        mem_small = run_stage(small, 1, args.size)[2]
        mem_large = run_stage(large, 1, args.size)[2]
    serial_rate = args.n / statistics.median(t for t, _, _ in serial)
    parallel_rate = args.n / statistics.median(t for t, _, _ in parallel)
    serial_phase = args.n / statistics.median(p for _, p, _ in serial)
    parallel_phase = args.n / statistics.median(p for _, p, _ in parallel)
    results = {
        "what": "rrg-stage preprocess on real 2000x2000 JPEGs (decode + resize + HDF5 write), end to end",
        "image_size": args.size,
        "n_images": args.n,
        "repeats": args.repeats,
        "serial_images_per_s": round(serial_rate, 1),
        "two_workers_images_per_s": round(parallel_rate, 1),
        "speedup_two_workers": round(parallel_rate / serial_rate, 2),
        "image_phase_serial_images_per_s": round(serial_phase, 1),
        "image_phase_two_workers_images_per_s": round(parallel_phase, 1),
        "image_phase_speedup_two_workers": round(parallel_phase / serial_phase, 2),
        "peak_rss_mib_serial_N": round(mem_small, 1),
        "peak_rss_mib_serial_4N": round(mem_large, 1),
        "projected_mimic_hours_two_workers": round(MIMIC_IMAGES / parallel_rate / 3600, 2),
        "note": ("median of interleaved runs; each run is a fresh process: the stage figures include ~1-2 s of "
                 "start-up (imports, worker spawn), the image-phase figures only decoding, resizing and writing"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    for key, value in results.items():
        if key != "machine":
            print(f"{key:36s} {value}")
    out = REPO / "bench" / "results" / "preprocess.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
