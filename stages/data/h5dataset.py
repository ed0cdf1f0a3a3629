"""`dataset.h5`: studies (ids, split, reports, token ids) and their images on one square grid.

Layout
  /studies/{id, split, report, clean}   (n,) strings
  /studies/{token_ids (n, L), token_len (n,), image_start (n,), image_count (n,)}
  /images/pixels (m, S, S) uint8, chunked one image per chunk
  /images/{study (m,), view (m,), path (m,), orig_shape (m, 2)}
  /bad/{path, reason}   files that could not be decoded and were skipped

Images are decoded by worker processes and written by this process alone, in study order, so a
run holds at most a few chunks in memory and an interrupted run resumes from its last chunk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from joblib import Parallel, delayed
from tqdm import tqdm

from stages.core.errors import StageError
from stages.core.resumable import STR, append, growable, mark_done, open_partial
from stages.data.images import decode_many
from stages.data.records import StudyRecord

@dataclass
class ImagePlan:
    """Every candidate image in study order; its fingerprint decides whether a partial run resumes."""

    study: np.ndarray
    view: list[str]
    path: list[str]

    @classmethod
    def from_records(cls, records: list[StudyRecord]) -> "ImagePlan":
        study, view, path = [], [], []
        for i, record in enumerate(records):
            for j, image in enumerate(record.images):
                study.append(i)
                view.append(record.views[j] if j < len(record.views) else "")
                path.append(str(image))
        return cls(np.asarray(study, dtype=np.int64), view, path)

    def fingerprint(self, options: dict) -> str:
        digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
        for p in self.path:
            digest.update(p.encode() + b"\0")
        return digest.hexdigest()


def _create(handle: h5py.File, size: int) -> None:
    images = handle.create_group("images")
    growable(images, "pixels", (size, size), np.uint8)
    growable(images, "candidate", (), np.int64)
    growable(images, "orig_shape", (2,), np.int32, chunks=(4096, 2))
    bad = handle.create_group("bad")
    growable(bad, "path", (), STR, chunks=(1024,))
    growable(bad, "reason", (), STR, chunks=(1024,))


def write_images(final: Path, plan: ImagePlan, *, size: int, workers: int, chunk: int, strict: bool,
                 key: str) -> h5py.File:
    """Decode every planned image into the partial file of `final`, resuming a run that was cut short."""
    handle = open_partial(final, key, lambda h: _create(h, size))
    done = int(handle.attrs["n_done"])
    starts = range(done, len(plan.path), chunk)
    jobs = (delayed(decode_many)(plan.path[s:s + chunk], size) for s in starts)
    bar = tqdm(total=len(plan.path), initial=done, desc="images", unit="img")
    try:
        for start, results in zip(starts, Parallel(n_jobs=workers, return_as="generator")(jobs)):
            ok = [(start + k, pixels, original) for k, (pixels, original, _) in enumerate(results) if pixels is not None]
            bad = [(plan.path[start + k], reason) for k, (_, _, reason) in enumerate(results) if reason is not None]
            if strict and bad:
                raise StageError(f"{bad[0][0]}: {bad[0][1]} (--strict stops at the first bad image; "
                                 "fix or remove the file, or run without --strict to skip bad images)")
            if ok:
                append(handle["images/candidate"], [c for c, _, _ in ok])
                append(handle["images/orig_shape"], [o for _, _, o in ok])
                append(handle["images/pixels"], np.stack([p for _, p, _ in ok]))
            for path, reason in bad:
                tqdm.write(f"skipped {path}: {reason}")
            if bad:
                append(handle["bad/path"], [p for p, _ in bad])
                append(handle["bad/reason"], [r for _, r in bad])
            mark_done(handle, start + len(results))
            bar.update(len(results))
    except BaseException:
        handle.close()
        raise
    finally:
        bar.close()
    return handle


def write_studies(handle: h5py.File, records: list[StudyRecord], plan: ImagePlan, cleaned: list[str],
                  token_ids: np.ndarray, token_len: np.ndarray) -> list[str]:
    """Write the study table for studies with at least one decoded image; return ids left out."""
    candidate = handle["images/candidate"][:]
    image_study = plan.study[candidate]
    counts = np.bincount(image_study, minlength=len(records))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.flatnonzero(counts > 0)
    remap = np.full(len(records), -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    images = handle["images"]
    images.create_dataset("study", data=remap[image_study])
    images.create_dataset("view", data=np.asarray([plan.view[c] for c in candidate], dtype=object), dtype=STR)
    images.create_dataset("path", data=np.asarray([plan.path[c] for c in candidate], dtype=object), dtype=STR)
    studies = handle.create_group("studies")
    for name, values in (("id", [r.id for r in records]), ("split", [r.split for r in records]),
                         ("report", [r.report for r in records]), ("clean", cleaned)):
        studies.create_dataset(name, data=np.asarray([values[i] for i in keep], dtype=object), dtype=STR)
    studies.create_dataset("token_ids", data=token_ids[keep], compression="gzip")
    studies.create_dataset("token_len", data=token_len[keep])
    studies.create_dataset("image_start", data=starts[keep])
    studies.create_dataset("image_count", data=counts[keep])
    return [records[i].id for i in np.flatnonzero(counts == 0)]


class DatasetFile:
    """Read access to dataset.h5 for later stages: study table in memory, images on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
            studies = self._h5["studies"]
            self.ids = studies["id"].asstr()[:].tolist()
            self.splits = np.asarray(studies["split"].asstr()[:])
            self.reports = studies["clean"].asstr()[:].tolist()
            self.raw_reports = studies["report"].asstr()[:].tolist()
            self.token_ids = studies["token_ids"][:]
            self.token_len = studies["token_len"][:]
            self.image_start = studies["image_start"][:]
            self.image_count = studies["image_count"][:]
        except (OSError, KeyError) as error:
            raise StageError(f"{self.path} is not a readable dataset.h5 ({error}); rebuild it with "
                             "rrg-stage preprocess --force") from None
        self.pixels = self._h5["images/pixels"]
        self.image_study = self._h5["images/study"][:]
        self.image_size = int(self.pixels.shape[-1])

    def __len__(self) -> int:
        return len(self.ids)

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def held_out_in(self, other: "DatasetFile") -> list[str]:
        """Ids of this dataset's training studies that are validation or test studies of `other`:
        training on them as extra data would leak into `other`'s scores."""
        held_out = {i for i, split in zip(other.ids, other.splits) if split != "train"}
        return [self.ids[r] for r in self.split_indices("train") if self.ids[r] in held_out]

    def view_rows(self, max_views: int) -> np.ndarray:
        """(n_studies, max_views) image row of each study's first views; -1 where a study has fewer."""
        counts = np.minimum(self.image_count, max_views)
        rows = np.full((len(self), max_views), -1, dtype=np.int64)
        for v in range(max_views):
            has = counts > v
            rows[has, v] = self.image_start[has] + v
        return rows

    def images(self, study: int) -> np.ndarray:
        """(views, S, S) uint8 images of one study."""
        start = int(self.image_start[study])
        return self.pixels[start:start + int(self.image_count[study])]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "DatasetFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
