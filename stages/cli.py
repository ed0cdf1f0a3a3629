"""`rrg-stage`: one command per pipeline stage, run one after another through artifact files."""

from __future__ import annotations

import click

from stages import (
    __version__,
    build_knowledge,
    extract_features,
    kmeans_init,
    label,
    make_demo,
    preprocess,
    status,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rrg-stage")
def main() -> None:
    """Stage-wise radiology report generation.

    Each stage reads the artifacts of earlier stages from ARTIFACTS/<dataset>/, writes its own
    with a .meta.json manifest beside each, and does nothing when its output is already up to
    date (use --force to rebuild). `make demo` runs the whole chain on the built-in demo dataset.
    """


for _stage in (make_demo, preprocess, label, extract_features, kmeans_init, build_knowledge, status):
    main.add_command(_stage.command)
