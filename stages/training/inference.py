"""Reports from a trained run: for a split of its dataset, or for a user's own image files.

Both paths give the model exactly what training gave it: the same stored image size, the same
cached-token encoder (or the trained end-to-end one), ADM-enhanced images when it was trained or
distilled for them (masks from adm.h5, or made by the diagnosis classifier for new images) and,
for label-conditioned models, labels predicted by the dataset's diagnosis classifier (or the
reference labels when the run was an explicit oracle ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from stages.adm.classifier import load_diagnosis, predict_labels
from stages.adm.enhance import enhance
from stages.adm.masks import adm_batch
from stages.core.errors import StageError
from stages.data.images import ImageError, load_xray
from stages.features.extract import encode_images
from stages.generation.config import LABEL_CONDITIONED
from stages.generation.decoding import Decoding
from stages.models.image_encoders import build_image_encoder
from stages.training.conditioning import predicted_study_labels
from stages.text.subword import SubwordTokenizer
from stages.training.data import Batch, StudySource
from stages.training.loop import decode_split
from stages.training.model import SavedModel, load_model
from stages.training.run import study_source
from stages.training.warmstart import subword_targets


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def dataset_dir(run_dir: Path) -> Path:
    """ARTIFACTS/<dataset>/ of a run at ARTIFACTS/<dataset>/runs/<name>/."""
    return Path(run_dir).resolve().parent.parent


def load_run(run_dir: Path, device: str = "cpu") -> SavedModel:
    try:
        return load_model(Path(run_dir) / "model.pt", device)
    except (ValueError, FileNotFoundError) as error:
        raise StageError(str(error)) from None


def _split_source(saved: SavedModel, run_dir: Path, split: str, targets: bool = False
                  ) -> tuple[StudySource, np.ndarray]:
    """The run's dataset as the model reads it at test time, and the rows of `split`; with
    `targets`, the reports in the model's own tokens (the warm-started model's sub-words)."""
    base = dataset_dir(run_dir)
    dataset_h5 = base / "dataset.h5"
    with h5py.File(dataset_h5, "r") as h5:
        n, image_study = h5["studies/id"].shape[0], h5["images/study"][:]
    labels = np.zeros((n, saved.config.num_classes), dtype=np.float32)
    if saved.config.model in LABEL_CONDITIONED:
        if saved.info.get("oracle"):
            with h5py.File(base / "labels.h5", "r") as h5:
                labels = h5["binary"][:].astype(np.float32)
        else:
            labels = predicted_study_labels(base / "adm.h5", base / "diagnosis.pt", image_study, n)
    subwords = None
    if targets and isinstance(saved.vocab, SubwordTokenizer):
        subwords = subword_targets(dataset_h5, saved.vocab, saved.config.max_length)[0]
    source = study_source(base, saved.model.visual, labels, enhanced=bool(saved.model.visual.adm), targets=subwords)
    rows = source.data.split_indices(split)
    if not len(rows):
        source.close()
        raise StageError(f"{dataset_h5} has no {split!r} studies")
    return source, rows


def split_predictions(run_dir: Path, split: str, decoding: Decoding, device: str = "cpu") -> dict[str, str]:
    """{study id: report} for every study of `split` of the run's dataset."""
    saved = load_run(run_dir, device)
    source, rows = _split_source(saved, run_dir, split)
    try:
        return decode_split(saved.model, source, rows, saved.vocab, decoding, desc=f"generating {split}")
    finally:
        source.close()


def image_reliance(run_dir: Path, split: str, batch_size: int = 16, device: str = "cpu") -> dict[str, float]:
    """Mean token cross-entropy of the reference reports of `split` (teacher forcing) given each
    study's own images and given the next study's (with the labels predicted from them, for a
    label-conditioned model): a model that reads its images loses when they are swapped, one that
    writes from its language prior alone does not."""
    saved = load_run(run_dir, device)
    model = saved.model.eval()
    source, rows = _split_source(saved, run_dir, split, targets=True)
    other = np.roll(rows, -1)
    totals = {"own_images": 0.0, "other_images": 0.0}
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = source.batch(rows[start:start + batch_size])
                swapped = source.batch(other[start:start + batch_size])
                for key, views in (("own_images", batch), ("other_images", swapped)):
                    given = replace(batch, views=views.views, view_mask=views.view_mask, labels=views.labels)
                    totals[key] += float(model(given.to(device)).loss) * len(batch.rows)
    finally:
        source.close()
    return {key: total / len(rows) for key, total in totals.items()}


def image_predictions(run_dir: Path, studies: Sequence[tuple[str, Sequence[Path]]], decoding: Decoding,
                      device: str = "cpu") -> tuple[dict[str, str], dict[str, list[str]]]:
    """Reports for studies given as (id, image files); also the predicted findings of each study.

    Unreadable images raise StageError naming every bad file before any work is done.
    """
    saved = load_run(run_dir, device)
    spec = saved.model.visual
    images: dict[str, np.ndarray] = {}
    errors = []
    for study, paths in studies:
        try:
            images[study] = np.stack([load_xray(Path(p), spec.image_size)[0] for p in paths[:spec.max_views]])
        except ImageError as error:
            errors.append(str(error))
    if errors:
        raise StageError("cannot read these images (nothing was generated):\n  " + "\n  ".join(errors))
    findings: dict[str, list[str]] = {}
    labels = np.zeros((len(studies), saved.config.num_classes), dtype=np.float32)
    if saved.config.model in LABEL_CONDITIONED or spec.adm:
        diagnosis_pt = dataset_dir(run_dir) / "diagnosis.pt"
        try:
            diagnosis = load_diagnosis(diagnosis_pt, spec.image_size, device)
        except (ValueError, FileNotFoundError) as error:
            raise StageError(f"{error}; this model reads the diagnosis classifier's labels or ADM masks") from None
        for row, (study, _) in enumerate(studies):
            predicted = predict_labels(images[study], diagnosis, study=np.zeros(len(images[study]), int))[0][0]
            labels[row] = predicted
            findings[study] = [name for name, on in zip(diagnosis.observations, predicted) if on]
            if spec.adm:
                masks = adm_batch(diagnosis, images[study], spec.adm["cam_threshold"], int(spec.adm["dilation"])).mask
                images[study] = enhance(images[study], masks, spec.adm["theta"], spec.adm["background"])
    encoder = None
    if spec.mode == "cached":
        encoder = build_image_encoder(spec.encoder, spec.weights).to(device).eval()
    out: dict[str, str] = {}
    generator = decoding.generator(device)
    for start in range(0, len(studies), decoding.batch_size):
        chunk = studies[start:start + decoding.batch_size]
        batch = _batch([images[s] for s, _ in chunk], labels[start:start + len(chunk)], spec.max_views, encoder,
                       spec.input_size, saved.config.max_length)
        ids = saved.model.generate(batch.to(device), decoding, generator)
        out.update({study: saved.vocab.decode(report) for (study, _), report in zip(chunk, ids)})
    return out, findings


def _batch(studies: list[np.ndarray], labels: np.ndarray, max_views: int, encoder, input_size: int,
           max_length: int) -> Batch:
    """A Batch of user images, as StudySource would make it for stored ones (no targets)."""
    size = studies[0].shape[-1]
    view_mask = torch.zeros(len(studies), max_views, dtype=torch.bool)
    pixels = np.zeros((len(studies), max_views, size, size), dtype=np.uint8)
    for i, views in enumerate(studies):
        pixels[i, :len(views)] = views
        view_mask[i, :len(views)] = True
    if encoder is not None:
        flat = pixels.reshape(-1, size, size)
        tokens = encode_images(encoder, flat, input_size)[2].cpu()
        visual = tokens.unflatten(0, (len(studies), max_views)).float()
    else:
        visual = torch.from_numpy(pixels).float().div_(255)
        if input_size != size:
            visual = torch.nn.functional.interpolate(visual, size=(input_size, input_size), mode="bilinear",
                                                     align_corners=False, antialias=True)
    empty = torch.zeros(len(studies), max_length, dtype=torch.int64)
    return Batch(np.arange(len(studies)), visual, view_mask, empty, empty.bool(), torch.from_numpy(labels))


def read_study_list(paths: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Studies from the command line: image files (one study each), folders (one study each, its
    images in name order) or a CSV with columns id,image_path (several rows per study allowed)."""
    studies: list[tuple[str, list[Path]]] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise StageError(f"{path} holds no image files (png, jpg, tif, bmp)")
            studies.append((path.name, files))
        elif path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype=str)
            if not {"id", "image_path"} <= set(table.columns):
                raise StageError(f"{path} needs columns id,image_path (has {list(table.columns)})")
            for study, group in table.groupby("id", sort=False):
                studies.append((study, [(path.parent / p) for p in group["image_path"]]))
        elif path.exists():
            studies.append((path.stem, [path]))
        else:
            raise StageError(f"{path} does not exist")
    return studies

