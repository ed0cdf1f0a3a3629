"""`rrg-stage`: one command per pipeline stage, run one after another through artifact files."""

from __future__ import annotations

import importlib

import click

from stages import __version__

# command name -> module defining `command`; imported only when that command runs (torch,
# transformers and scikit-learn take seconds to import, `status` and `--help` should not wait)
STAGES = {
    "make-demo": "stages.make_demo",
    "preprocess": "stages.preprocess",
    "label": "stages.label",
    "pretrain": "stages.pretrain",
    "probe": "stages.probe",
    "extract-features": "stages.extract_features",
    "kmeans-init": "stages.kmeans_init",
    "build-knowledge": "stages.build_knowledge",
    "adm-masks": "stages.adm_masks",
    "train": "stages.train",
    "distill": "stages.distill",
    "generate": "stages.generate",
    "synthesize": "stages.synthesize",
    "baselines": "stages.baselines",
    "evaluate": "stages.evaluate",
    "compare": "stages.compare",
    "status": "stages.status",
}


class StageGroup(click.Group):
    """Lists the stages in pipeline order and imports each one on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(STAGES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in STAGES:
            return None
        return importlib.import_module(STAGES[name]).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, (self.get_command(ctx, name).help or "").split("\n")[0]) for name in self.list_commands(ctx)]
        with formatter.section("Stages (in pipeline order)"):
            formatter.write_dl(rows)


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rrg-stage")
def main() -> None:
    """Stage-wise radiology report generation.

    Each stage reads the artifacts of earlier stages from ARTIFACTS/<dataset>/, writes its own
    with a .meta.json manifest beside each, and does nothing when its output is already up to
    date (use --force to rebuild). `make demo` runs the whole chain on the built-in demo dataset;
    `rrg-stage STAGE --help` explains a stage's options.
    """


if __name__ == "__main__":  # `python -m stages.cli`, e.g. under `torchrun --nproc_per_node N -m stages.cli train ...`
    main()
