"""A static, self-contained HTML page to read a run's reports next to its images.

One file: images are embedded as base64 PNG thumbnails (with the ADM mask as a transparent red
layer that a checkbox shows), so the page can be mailed or opened from any folder. Per study it
shows the generated and the reference report exactly as scored and where their labels agree
(both positive), where the report invents a finding (generated only) or misses one (reference
only). Only the first `limit` studies by id are embedded, so that a MIMIC-size split stays a page
a browser opens; the page says how many were left out.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from stages.adm.masks import read_masks
from stages.core.artifacts import atomic_output
from stages.data.h5dataset import DatasetFile
from stages.evaluation.nlg import NLG_METRICS
from stages.evaluation.score import Evaluation
from stages.labeling.observations import OBSERVATIONS

# (views, S, S) uint8 images and, with an adm.h5, their (views, S, S) bool masks
StudyImages = tuple[np.ndarray, np.ndarray | None]

_MASK_RGBA = (230, 40, 40, 120)
THUMBNAIL = 160

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
header{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc}
.study{display:flex;gap:1em;border-bottom:1px solid #eee;padding:.8em 0}
.views{display:flex;gap:.3em;flex:none}
.view{position:relative}
.view img{display:block}
.view img.mask{position:absolute;left:0;top:0;display:none}
body.masks .view img.mask{display:block}
.text{flex:1;min-width:20em}
.text p{margin:.2em 0 .6em}
.label{display:inline-block;border-radius:3px;padding:0 .4em;margin:.1em;font-size:.85em}
.both{background:#cfe8cf}.generated{background:#f8d9a8}.reference{background:#f4bcbc}
"""

_SCRIPT = """
const box = document.getElementById('q');
box.addEventListener('input', () => {
  const q = box.value.trim().toLowerCase();
  for (const s of document.querySelectorAll('.study')) s.hidden = q !== '' && !s.dataset.id.toLowerCase().includes(q);
});
document.getElementById('m').addEventListener('change', e => document.body.classList.toggle('masks', e.target.checked));
"""


def load_images(dataset_h5: Path, ids: Sequence[str], adm_h5: Path | None = None) -> dict[str, StudyImages]:
    """The images (and ADM masks, whose rows follow dataset.h5's /images) of the given studies."""
    found: dict[str, StudyImages] = {}
    with DatasetFile(dataset_h5) as data:
        row_of = {study: row for row, study in enumerate(data.ids)}
        for study in ids:
            row = row_of.get(study)
            if row is None:
                continue
            start = int(data.image_start[row])
            rows = slice(start, start + int(data.image_count[row]))
            found[study] = (data.images(row), read_masks(adm_h5, rows) if adm_h5 else None)
    return found


def _png(array: np.ndarray) -> str:
    """A grey (S, S) image or an RGBA (S, S, 4) mask layer as a THUMBNAIL-sized data URI."""
    image = Image.fromarray(array)
    resample = Image.Resampling.NEAREST if array.ndim == 3 else Image.Resampling.BILINEAR
    buffer = io.BytesIO()
    image.resize((THUMBNAIL, THUMBNAIL), resample).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _views(images: StudyImages) -> str:
    pixels, masks = images
    out = []
    for k, image in enumerate(pixels):
        layers = f'<img src="{_png(image)}" width="{THUMBNAIL}" height="{THUMBNAIL}" alt="view {k}">'
        if masks is not None:
            overlay = np.zeros((*masks[k].shape, 4), dtype=np.uint8)
            overlay[masks[k]] = _MASK_RGBA
            layers += f'<img class="mask" src="{_png(overlay)}" width="{THUMBNAIL}" height="{THUMBNAIL}" alt="">'
        out.append(f'<div class="view">{layers}</div>')
    return f'<div class="views">{"".join(out)}</div>'


def _labels(generated: np.ndarray, reference: np.ndarray) -> str:
    chips = []
    for k, name in enumerate(OBSERVATIONS):
        kind = {(1, 1): "both", (1, 0): "generated", (0, 1): "reference"}.get((int(generated[k]), int(reference[k])))
        if kind:
            chips.append(f'<span class="label {kind}">{html.escape(name)}</span>')
    return "".join(chips)


def render(evaluation: Evaluation, images: Mapping[str, StudyImages], title: str, limit: int) -> str:
    """The page's HTML for the first `limit` studies of `evaluation`."""
    metrics = evaluation.metrics
    shown = min(limit, len(evaluation.ids))
    figures = "  ".join(f"{name.replace('_', '-')} {metrics['nlg'][name]:.3f}" for name in NLG_METRICS)
    ce = metrics["ce"]
    figures += (f"  |  CE ({html.escape(metrics['labeler'])}) F1 micro {ce['micro']['f1']:.3f}, "
                f"macro {ce['macro']['f1']:.3f}, example {ce['example']['f1']:.3f}")
    note = f"{shown} of {len(evaluation.ids)} {html.escape(metrics['split'])} studies shown (the first by id)"
    if shown < len(evaluation.ids):
        note += "; the scored CSV beside this page lists all of them"
    cards = []
    for i in range(shown):
        study = evaluation.ids[i]
        views = _views(images[study]) if study in images else ""
        cards.append(
            f'<section class="study" data-id="{html.escape(study)}">{views}<div class="text">'
            f"<h3>{html.escape(study)}</h3>"
            f"<b>generated</b><p>{html.escape(evaluation.generated[i])}</p>"
            f"<b>reference</b><p>{html.escape(evaluation.references[i])}</p>"
            f"{_labels(evaluation.generated_labels[i], evaluation.reference_labels[i])}</div></section>"
        )
    has_masks = any(masks is not None for _, masks in images.values())
    mask_box = ('<label><input type="checkbox" id="m"> ADM masks</label>' if has_masks
                else '<input type="hidden" id="m">')
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><header><h2>{html.escape(title)}</h2>"
        f"<div>{figures}</div><div>{note}</div>"
        f'<input id="q" placeholder="filter by study id" size="30"> {mask_box} '
        '<span class="label both">labelled in both</span><span class="label generated">generated only</span>'
        '<span class="label reference">reference only</span></header>'
        + "\n".join(cards) + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_viewer(path: Path, evaluation: Evaluation, images: Mapping[str, StudyImages], title: str,
                 limit: int) -> int:
    """Write the page atomically; returns the number of studies shown."""
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(render(evaluation, images, title, limit), encoding="utf-8")
    return min(limit, len(evaluation.ids))
