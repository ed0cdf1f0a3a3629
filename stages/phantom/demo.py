"""The demo dataset: real Open-i report text paired with phantom radiographs of its findings.

Written in the R2Gen layout (annotation.json + images/<study>/0.png frontal, 1.png lateral) so
that `preprocess` reads it exactly like IU X-Ray, plus `regions.h5` with the true region of every
rendered finding, which lets attention masks be scored against ground truth.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from joblib import Parallel, delayed
from PIL import Image
from tqdm import tqdm

from stages.data.openi import OpeniReport, hash_split, iter_reports_tgz
from stages.data.r2gen import load_annotation
from stages.data.records import SPLITS
from stages.labeling.observations import OBSERVATIONS
from stages.labeling.rules import RuleLabeler
from stages.phantom.locate import findings_from_sentences
from stages.phantom.render import Finding, render_study
from stages.phantom.sheet import contact_sheet

VIEWS = ("frontal", "lateral")


@dataclass
class DemoStudy:
    id: str
    split: str
    report: str
    findings: list[Finding]


def select_studies(reports: list[OpeniReport], n_studies: int, split_file: Path | None, seed: int,
                   abnormal_fraction: float | None = None, test_studies: int | None = None) -> list[DemoStudy]:
    """Studies with findings text, split as R2Gen (with `split_file`) or by id hash.

    Each split is sampled in proportion to its size, so the demo keeps the split's shape at any
    size; `test_studies` sets the test split's size instead (as far as its pool allows), because
    measuring needs more studies than training at the demo's scale. The test split is drawn last,
    so its size never changes which training and validation studies are chosen. With
    `abnormal_fraction`, that share of each split's sample (as far as the pool allows) is drawn
    from studies with at least one finding, so that a small demo still has enough positives to
    learn and score every finding; None keeps the natural mix.
    """
    splits = None
    if split_file is not None:
        splits = {e["id"]: split for split, entries in load_annotation(split_file).items() for e in entries}
    labeler = RuleLabeler()
    by_split: dict[str, list[DemoStudy]] = {s: [] for s in SPLITS}
    for report in reports:
        split = splits.get(report.study_id) if splits is not None else hash_split(report.study_id)
        if report.findings and split is not None:
            findings = findings_from_sentences(labeler.label_sentences(report.findings))
            by_split[split].append(DemoStudy(report.study_id, split, report.findings, findings))
    total = sum(len(v) for v in by_split.values())
    rng = np.random.default_rng(seed)
    chosen = []
    for split in SPLITS:
        pool = by_split[split]
        share = round(n_studies * len(pool) / max(total, 1))
        take = min(len(pool), test_studies if split == "test" and test_studies is not None else share)
        abnormal = [i for i, study in enumerate(pool) if study.findings]
        normal = [i for i, study in enumerate(pool) if not study.findings]
        if abnormal_fraction is None:
            picked = rng.choice(len(pool), size=take, replace=False)
        else:
            n_abnormal = min(len(abnormal), round(take * abnormal_fraction))
            n_normal = min(len(normal), take - n_abnormal)
            n_abnormal = take - n_normal
            picked = np.concatenate([rng.choice(abnormal, size=n_abnormal, replace=False),
                                     rng.choice(normal, size=n_normal, replace=False)]).astype(int)
        chosen += [pool[i] for i in sorted(picked)]
    return chosen


def _render(study: DemoStudy, size: int, seed: int):
    digest = hashlib.sha256(f"{seed}:{study.id}".encode()).digest()
    return render_study(study.findings, size=size, rng=np.random.default_rng(int.from_bytes(digest[:8], "little")))


def write_demo(out: Path, studies: list[DemoStudy], size: int, seed: int, workers: int = 1) -> dict[str, int]:
    """Render and write every study into `out` (a fresh folder); return counts per split."""
    (out / "images").mkdir(parents=True)
    annotation: dict[str, list[dict]] = {s: [] for s in SPLITS}
    paths, regions = [], []
    rendered = Parallel(n_jobs=workers, return_as="generator")(delayed(_render)(s, size, seed) for s in studies)
    for study, result in tqdm(zip(studies, rendered), total=len(studies), desc="phantoms", unit="study"):
        folder = out / "images" / study.id
        folder.mkdir()
        image_paths = [f"{study.id}/{i}.png" for i in range(len(VIEWS))]
        for name, pixels in zip(image_paths, (result.frontal, result.lateral)):
            Image.fromarray(pixels).save(out / "images" / name)
        paths += image_paths
        regions += [result.frontal_regions, result.lateral_regions]
        annotation[study.split].append({
            "id": study.id, "report": study.report, "image_path": image_paths, "split": study.split,
            "views": list(VIEWS),
            "findings": [{"observation": OBSERVATIONS[f.observation], "side": f.side, "zone": f.zone,
                          "severity": f.severity, "uncertain": f.uncertain} for f in study.findings],
        })
    (out / "annotation.json").write_text(json.dumps(annotation, indent=1))
    with h5py.File(out / "regions.h5", "w") as h5:
        h5.create_dataset("image_path", data=np.asarray(paths, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("regions", data=np.packbits(np.stack(regions), axis=-1), compression="gzip")
        h5.attrs["observations"] = json.dumps(OBSERVATIONS)
        h5.attrs["size"] = size
        h5.attrs["note"] = "regions are bit-packed along the last axis: np.unpackbits(..., axis=-1)[..., :size]"
    return {split: len(entries) for split, entries in annotation.items()}


def read_regions(path: Path) -> tuple[list[str], np.ndarray]:
    """Image paths and their (n, 14, S, S) bool ground-truth regions from a demo's regions.h5."""
    with h5py.File(path, "r") as h5:
        size = int(h5.attrs["size"])
        packed = h5["regions"][:]
        return h5["image_path"].asstr()[:].tolist(), np.unpackbits(packed, axis=-1)[..., :size].astype(bool)


def preview(out: Path, path: Path, count: int = 16) -> None:
    """A contact sheet of the first `count` studies (frontal + lateral) with their findings."""
    entries = [e for split in SPLITS for e in json.loads((out / "annotation.json").read_text())[split]]
    images, captions = [], []
    for entry in entries[:count]:
        names = ", ".join(f["observation"] for f in entry["findings"]) or "No Finding"
        for i, (name, view) in enumerate(zip(entry["image_path"], entry["views"])):
            images.append(np.asarray(Image.open(out / "images" / name)))
            captions.append(f"{entry['id']}: {names}" if i == 0 else view)
    contact_sheet(images, captions, columns=8).save(path)
