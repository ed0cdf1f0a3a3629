"""Synthetic image-report pairs on disk: an R2Gen folder, and a dataset.h5 made by preprocessing's code.

The generated images are written as PNGs in R2Gen's layout (annotation.json + images/<id>/<k>.png)
and dataset.h5 is built from that folder by the functions `preprocess` uses (the R2Gen reader and
its validation, the same report cleaning, the image decoder and the HDF5 writer), so a synthetic
dataset is checked exactly as a real one is. Token ids use the real dataset's vocabulary, so a
report generator trained on the real data can read the synthetic studies as extra training pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stages.core.resumable import commit
from stages.data.h5dataset import ImagePlan, write_images, write_studies
from stages.data.r2gen import read_r2gen
from stages.text.vocab import Vocabulary


@dataclass
class SyntheticStudy:
    id: str
    report: str
    images: list[np.ndarray]         # (S, S) uint8 each
    views: list[str]
    prompt_study: str                # the real study whose report was the prompt
    references: list[str] = field(default_factory=list)  # the reference image of each view (its path in dataset.h5)

    def entry(self) -> dict:
        return {"id": self.id, "report": self.report, "image_path": [f"{self.id}/{k}.png" for k in range(len(self.images))],
                "views": self.views, "prompt_study": self.prompt_study, "references": self.references}


def write_r2gen(root: Path, studies: list[SyntheticStudy], split: str = "train") -> Path:
    """Write the studies as an R2Gen folder (all in `split`); returns annotation.json."""
    for study in studies:
        folder = root / "images" / study.id
        folder.mkdir(parents=True, exist_ok=True)
        for k, pixels in enumerate(study.images):
            Image.fromarray(pixels).save(folder / f"{k}.png")
    annotation = root / "annotation.json"
    annotation.write_text(json.dumps({split: [s.entry() for s in studies]}, indent=1))
    return annotation


def build_dataset(root: Path, dataset_h5: Path, vocab: Vocabulary, *, clean_style: str, max_length: int,
                  image_size: int, key: str) -> dict[str, int]:
    """dataset.h5 of an R2Gen folder with preprocessing's reader, checks and writers, and `vocab`
    (the real dataset's) for the token ids; any bad image or empty report stops it."""
    from stages.preprocess import check_records  # the stage's own validation, applied unchanged

    records, cleaned = check_records(read_r2gen(root), clean_style, strict=True)
    token_ids, token_len = vocab.encode_batch(cleaned, max_length)
    plan = ImagePlan.from_records(records)
    handle = write_images(dataset_h5, plan, size=image_size, workers=1, chunk=16, strict=True, key=key)
    write_studies(handle, records, plan, cleaned, token_ids, token_len)
    n_images = int(handle["images/pixels"].shape[0])
    commit(handle, dataset_h5)
    return {"studies": len(records), "train": sum(r.split == "train" for r in records), "images": n_images,
            "unknown_tokens": int((token_ids == vocab.unk_id).sum())}
