"""`rrg-stage status`: what a dataset's artifact folder holds, and whether each piece is trustworthy."""

from __future__ import annotations

from pathlib import Path

import click

from stages.core.artifacts import MANIFEST_SUFFIX, check_input, read_manifest
from stages.core.errors import StageError
from stages.core.stage import StageContext, stage_options


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@click.command("status")
@stage_options
def command(ctx: StageContext) -> None:
    """List the artifacts of a dataset with their stage, counts, size and state (ok / stale / broken)."""
    manifests = sorted(ctx.dir.rglob("*" + MANIFEST_SUFFIX))
    if not manifests:
        click.echo(f"no artifacts under {ctx.dir} yet")
        return
    click.echo(f"artifacts of {ctx.dataset} under {ctx.dir}:")
    for manifest_file in manifests:
        path = manifest_file.with_name(manifest_file.name[: -len(MANIFEST_SUFFIX)])
        manifest = read_manifest(path) or {}
        try:
            check_input(path, manifest.get("dataset", ctx.dataset))
            state = "ok"
        except StageError as error:
            state = f"NOT USABLE: {error.message}"
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items()
                           if not isinstance(v, (list, dict)))
        size = _human(manifest.get("size", 0))
        click.echo(f"  {str(Path(path).relative_to(ctx.dir)):28s} {manifest.get('stage', '?'):16s} "
                   f"{size:>8s}  {counts}  [{state}]")
