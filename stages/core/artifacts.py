"""Artifacts: atomic writes, sidecar manifests, and the checks that keep stale inputs out.

Every artifact `X` has a manifest `X.meta.json` recording the stage and options that built it,
its inputs with their checksums, its own checksum and row counts. A stage trusts an input only
when the manifest exists, agrees with the file, names the same dataset, and every input it was
built from is still the version it recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from stages import __version__
from stages.core.errors import StageError

MANIFEST_SUFFIX = ".meta.json"

# Which stage builds which artifact, for the "build it with ..." hints.
PRODUCERS: dict[str, str] = {
    "dataset.h5": "preprocess --dataset {dataset} --root DIR",
    "vocab.json": "preprocess --dataset {dataset} --root DIR",
    "labels.h5": "label --dataset {dataset}",
    "features.h5": "extract-features --dataset {dataset}",
    "features_adm.h5": "extract-features --dataset {dataset} --adm (or train with --visual end-to-end or --no-adm)",
    "model.pt": "train --dataset {dataset} --name NAME (the run named by the path)",
    "prototypes.pkl": "kmeans-init --dataset {dataset}",
    "knowledge.pkl": "build-knowledge --dataset {dataset}",
    "diagnosis.pt": "adm-masks --dataset {dataset}",
    "adm.h5": "adm-masks --dataset {dataset}",
    "pretrain.pt": "pretrain --dataset {dataset} --name NAME (the run named by the path)",
    "encoder.pt": "pretrain --dataset {dataset} --name NAME (the run named by the path)",
    "vision.pt": "synthesize train-vision --dataset {dataset} --name NAME (the run named by the path)",
    "metrics_test.json": "evaluate --run artifacts/{dataset}/runs/NAME --split test",
    "metrics_val.json": "evaluate --run artifacts/{dataset}/runs/NAME --split val",
}


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def checksum(path: Path) -> str:
    """sha256 of a file, or of the sorted (relative name, checksum) pairs of a directory."""
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{child.relative_to(path)}\0{checksum(child)}\n".encode())
        return digest.hexdigest()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds.

    The old artifact's manifest is removed first, so a crash between the rename and the new
    manifest leaves an artifact that no later stage trusts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        manifest_path(path).unlink(missing_ok=True)
        if path.is_dir():
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure through a temporary sibling (a crash leaves the previous image
    whole) and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def load_torch(path: Path, what: str, fix: str = "") -> Any:
    """torch.load (tensors and plain values only) whose errors name the file: FileNotFoundError
    when it is absent, ValueError when it is not a readable torch file; `fix` ends both messages."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found{fix}") from None
    except Exception as error:  # noqa: BLE001  (torch raises many kinds for a damaged file)
        raise ValueError(f"{path} is not a {what} ({type(error).__name__}: {error}){fix}") from None


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of artifact `path`, or None when it is missing or unreadable."""
    try:
        return json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return None


def write_manifest(
    path: Path,
    *,
    stage: str,
    dataset: str,
    options: dict[str, Any],
    inputs: dict[str, Path],
    counts: dict[str, Any],
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Describe a finished artifact; written last, so its presence means the artifact is whole."""
    manifest = {
        "artifact": path.name,
        "stage": stage,
        "dataset": dataset,
        "options": options,
        "inputs": {name: _input_record(p, path) for name, p in inputs.items()},
        "sha256": checksum(path),
        "size": _size(path),
        "counts": counts,
        "command": command_line(),
        "package_version": __version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - started, 3),
        **(extra or {}),
    }
    write_json_atomic(manifest_path(path), manifest)
    return manifest


def _input_record(input_path: Path, artifact: Path) -> dict[str, Any]:
    """Artifacts are recorded relative to the artifact (so folders can move) and checked again
    downstream; raw inputs (no manifest) by absolute path, checked by the stage that reads them."""
    manifest = read_manifest(input_path)
    if manifest is not None:
        return {"path": os.path.relpath(input_path, artifact.parent), "sha256": manifest["sha256"], "artifact": True}
    return {"path": str(Path(input_path).resolve()), "sha256": checksum(input_path), "artifact": False}


def command_name(ctx: click.Context) -> str:
    """The command's name below `rrg-stage`, with its group's (e.g. "synthesize evaluate")."""
    names = []
    while ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(names) or (ctx.info_name or "")


def command_line() -> str:
    """The stage's command line, rebuilt from click's parsed options (also right under a test runner)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return " ".join(["rrg-stage", *sys.argv[1:]])
    words = ["rrg-stage", command_name(ctx)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or not param.opts:
            continue
        flag = max(param.opts, key=len)
        words += [flag] if value is True else [flag, str(value)]
    return " ".join(words)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def rebuild_hint(path: Path, dataset: str) -> str:
    producer = PRODUCERS.get(path.name)
    if producer is None:
        return "rebuild it with the stage that writes it"
    return "build it with: rrg-stage " + producer.format(dataset=dataset)


def check_input(path: Path, dataset: str) -> dict[str, Any]:
    """Return the manifest of a trustworthy input artifact, or stop with the fix.

    The artifacts it was built from must still be the versions it recorded (one level up; each
    of those was checked the same way when it was built).
    """
    if not path.exists():
        raise StageError(f"{path} is missing; {rebuild_hint(path, dataset)}")
    manifest = read_manifest(path)
    if manifest is None:
        raise StageError(
            f"{path} has no readable manifest ({manifest_path(path).name}): it was interrupted or "
            f"written by hand. Re-run the stage that writes it with --force; {rebuild_hint(path, dataset)}"
        )
    if manifest.get("dataset") != dataset:
        raise StageError(
            f"{path} was built for dataset {manifest.get('dataset')!r}, not {dataset!r}; "
            f"check --dataset/--artifacts, or {rebuild_hint(path, dataset)}"
        )
    if manifest.get("size") != _size(path):
        raise StageError(
            f"{path} changed after its manifest was written (size differs); "
            f"rebuild it: {manifest.get('command', rebuild_hint(path, dataset))} --force"
        )
    for name, recorded in manifest.get("inputs", {}).items():
        if not recorded.get("artifact"):
            continue  # a raw input: the stage that reads it checks it whenever it runs
        upstream = path.parent / recorded["path"]
        current = read_manifest(upstream)
        if current is None or current.get("sha256") != recorded["sha256"]:
            raise StageError(
                f"{path} is stale: its input {name} ({upstream}) has changed since it was built. "
                f"Rebuild it: {manifest.get('command', rebuild_hint(path, dataset))} --force"
            )
    return manifest


def is_up_to_date(path: Path, options: dict[str, Any], inputs: dict[str, Path]) -> bool:
    """True when `path` was built with these options from the current versions of these inputs."""
    manifest = read_manifest(path)
    if manifest is None or not path.exists() or manifest.get("size") != _size(path):
        return False
    if manifest.get("options") != json.loads(json.dumps(options, default=str)):
        return False
    if manifest.get("package_version") != __version__:
        return False
    recorded = manifest.get("inputs", {})
    if set(recorded) != set(inputs):
        return False
    for name, p in inputs.items():
        current = read_manifest(p)
        sha = current.get("sha256") if current else (checksum(p) if p.exists() else None)
        if sha != recorded[name]["sha256"]:
            return False
    return True
