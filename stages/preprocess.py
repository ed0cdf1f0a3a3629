"""`rrg-stage preprocess`: a raw dataset -> dataset.h5 (cleaned reports, token ids, images) + vocab.json."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import click

from stages.core.artifacts import atomic_output
from stages.core.config import resolve
from stages.core.errors import StageError
from stages.core.resumable import commit
from stages.core.stage import StageContext, stage_options
from stages.data.h5dataset import ImagePlan, write_images, write_studies
from stages.data.mimic import read_mimic
from stages.data.openi import read_openi
from stages.data.r2gen import read_r2gen
from stages.data.records import SPLITS, StudyRecord
from stages.text.clean import clean_report, is_empty
from stages.text.vocab import Vocabulary


def source_files(layout: str, root: Path, annotation: Path | None, split_file: Path | None) -> dict[str, Path]:
    """The raw files whose checksums identify the version of a dataset."""
    if layout == "r2gen":
        return {"annotation": annotation or root / "annotation.json"}
    if layout == "openi":
        return {"reports": root, **({"split_file": split_file} if split_file else {})}
    csv = root / "mimic-cxr-2.0.0-split.csv"
    return {"split_csv": csv if csv.exists() else csv.with_suffix(".csv.gz")}


def read_records(layout: str, root: Path, annotation: Path | None, split_file: Path | None,
                 reports: Path | None) -> list[StudyRecord]:
    if layout == "r2gen":
        return read_r2gen(root, annotation)
    if layout == "openi":
        return read_openi(root, split_file)
    return read_mimic(root, reports)


def check_records(records: list[StudyRecord], clean_style: str, strict: bool) -> tuple[list[StudyRecord], list[str]]:
    """Refuse duplicate ids; drop (or, with --strict, refuse) studies whose report is empty."""
    duplicates = [study for study, n in Counter(r.id for r in records).items() if n > 1]
    if duplicates:
        sources = sorted({r.source for r in records if r.id in duplicates})
        raise StageError(f"duplicate study ids {duplicates[:5]} in {', '.join(sources[:3])}; "
                         "each study must appear once (across all splits)")
    kept, cleaned = [], []
    for record in records:
        text = clean_report(record.report, clean_style)
        if is_empty(text):
            message = f"study {record.id} in {record.source} has an empty report"
            if strict:
                raise StageError(message + " (--strict); fill in or remove the study")
            click.echo(f"[preprocess] skipped: {message}")
            continue
        kept.append(record)
        cleaned.append(text)
    return kept, cleaned


@click.command("preprocess")
@stage_options
@click.option("--root", type=click.Path(path_type=Path), help="The raw dataset folder [demo: artifacts/demo/raw].")
@click.option("--layout", type=click.Choice(["r2gen", "openi", "mimic"]),
              help="How the raw folder is organised [r2gen for demo/iu_xray, mimic for mimic].")
@click.option("--annotation", type=click.Path(path_type=Path), help="r2gen: annotation file if not ROOT/annotation.json.")
@click.option("--split-file", type=click.Path(path_type=Path), help="openi: an R2Gen annotation.json whose split to use.")
@click.option("--reports", type=click.Path(path_type=Path), help="mimic: folder holding files/pXX/.../sNNN.txt reports.")
@click.option("--image-size", type=int, help="Side of the stored square images in pixels [128 demo, 256 iu_xray/mimic].")
@click.option("--min-count", type=int, help="Vocabulary: keep training tokens seen at least this often [3 demo/iu_xray, 10 mimic].")
@click.option("--max-length", type=int, help="Token ids kept per report, BOS included [60 demo/iu_xray, 100 mimic].")
@click.option("--clean-style", type=click.Choice(["iu", "mimic"]), help="R2Gen cleaning variant [iu for demo/iu_xray, mimic for mimic].")
@click.option("--workers", type=int, default=min(4, os.cpu_count() or 1), show_default=True,
              help="Image-decoding worker processes.")
@click.option("--chunk", type=int, default=16, show_default=True, help="Images per worker task.")
@click.option("--strict", is_flag=True, help="Fail on the first bad image or empty report instead of skipping it.")
def command(ctx: StageContext, root: Path | None, layout: str | None, annotation: Path | None,
            split_file: Path | None, reports: Path | None, image_size: int | None, min_count: int | None,
            max_length: int | None, clean_style: str | None, workers: int, chunk: int, strict: bool) -> None:
    """Clean reports, build the vocabulary, and decode every image once into dataset.h5.

    Defaults in [brackets] come from pipelines/<dataset>.toml; an option given here wins.

    Bad images (missing, empty, truncated, unreadable) are named, skipped and counted in the
    manifest; --strict makes them fatal. An interrupted run resumes where it stopped.
    """
    options = resolve(ctx.dataset, "preprocess", dict(
        root=root, layout=layout, annotation=annotation, split_file=split_file, reports=reports,
        image_size=image_size, min_count=min_count, max_length=max_length, clean_style=clean_style, strict=strict,
    ), required=("root", "layout", "image_size", "min_count", "max_length", "clean_style"))
    root = Path(options["root"])
    if not root.is_dir():
        raise StageError(f"--root {root} does not exist or is not a folder; download the dataset "
                         f"(see README, 'Datasets') and point --root at it")
    to_path = {key: Path(options[key]) if options.get(key) else None for key in ("annotation", "split_file", "reports")}
    sources = source_files(options["layout"], root, to_path["annotation"], to_path["split_file"])
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    dataset_h5, vocab_json = ctx.path("dataset.h5"), ctx.path("vocab.json")
    if ctx.up_to_date([dataset_h5, vocab_json], options, sources):
        return

    records = read_records(options["layout"], root, **to_path)
    records, cleaned = check_records(records, options["clean_style"], strict)
    train = [text for record, text in zip(records, cleaned) if record.split == "train"]
    if not train:
        raise StageError(f"no training studies in {root}: the vocabulary is built from the train split")
    vocab = Vocabulary.build(train, options["min_count"])
    token_ids, token_len = vocab.encode_batch(cleaned, options["max_length"])

    plan = ImagePlan.from_records(records)
    click.echo(f"[preprocess] {len(records)} studies, {len(plan.path)} images, vocabulary {len(vocab) - 1} tokens")
    handle = write_images(dataset_h5, plan, size=options["image_size"], workers=workers, chunk=chunk,
                          strict=strict, key=plan.fingerprint(options))
    dropped = write_studies(handle, records, plan, cleaned, token_ids, token_len)
    bad = list(zip(handle["bad/path"].asstr()[:], handle["bad/reason"].asstr()[:]))
    splits = handle["studies/split"].asstr()[:].tolist()
    n_images = handle["images/pixels"].shape[0]
    commit(handle, dataset_h5)
    with atomic_output(vocab_json) as tmp:
        tmp.write_text(vocab.to_json())

    counts = {"studies": len(splits), **{s: splits.count(s) for s in SPLITS}, "images": n_images,
              "bad_images": len(bad), "dropped_studies": len(dropped), "vocab_size": len(vocab) - 1}
    extra = {"bad_images": [{"path": p, "reason": r} for p, r in bad], "dropped_studies": dropped}
    ctx.finish(dataset_h5, options=options, inputs=sources, counts=counts, extra=extra)
    ctx.finish(vocab_json, options=options, inputs=sources, counts={"tokens": len(vocab) - 1})
    if bad:
        click.echo(f"[preprocess] {len(bad)} bad image(s) skipped; listed in {dataset_h5.name}.meta.json")
