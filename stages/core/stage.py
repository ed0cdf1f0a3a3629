"""What every stage shares: the common options and a small run context around the artifacts."""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from stages.core import artifacts
from stages.core.config import canonical_dataset


def stage_options(func: Callable) -> Callable:
    """Add --dataset, --artifacts, --seed and --force, and pass a `StageContext` as `ctx`."""

    @click.option("--dataset", default="demo", show_default=True,
                  help="demo, iu_xray or mimic (mimic_cxr accepted).")
    @click.option("--artifacts", "artifacts_dir", default="artifacts", show_default=True,
                  type=click.Path(file_okay=False, path_type=Path),
                  help="Output root; this dataset's artifacts go to ARTIFACTS/<dataset>/.")
    @click.option("--seed", default=0, show_default=True, help="Random seed (the stage is deterministic under it).")
    @click.option("--force", is_flag=True, help="Rebuild even when the output is up to date.")
    @functools.wraps(func)
    def wrapper(dataset: str, artifacts_dir: Path, seed: int, force: bool, **kwargs: Any) -> Any:
        name = artifacts.command_name(click.get_current_context())
        ctx = StageContext(name, canonical_dataset(dataset), artifacts_dir, seed, force)
        ctx.seed_everything()
        return func(ctx, **kwargs)

    return wrapper


@dataclass
class StageContext:
    stage: str
    dataset: str
    artifacts: Path
    seed: int
    force: bool
    started: float = field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        return self.artifacts / self.dataset

    def path(self, name: str) -> Path:
        return self.dir / name

    def input(self, name: str) -> Path:
        """An input artifact of this dataset, checked (exists, whole, current) before use."""
        path = self.path(name)
        artifacts.check_input(path, self.dataset)
        click.echo(f"[{self.stage}] reads {path}")
        return path

    def seed_everything(self) -> None:
        random.seed(self.seed)
        np.random.seed(self.seed)

    def up_to_date(self, outputs: list[Path], options: dict[str, Any], inputs: dict[str, Path]) -> bool:
        """Say so and return True when every output is current (and --force was not given)."""
        if self.force or not all(artifacts.is_up_to_date(o, options, inputs) for o in outputs):
            return False
        for output in outputs:
            output.touch()  # keeps make's timestamps in step with what the stage decided
        names = ", ".join(str(o) for o in outputs)
        click.echo(f"[{self.stage}] {names} up to date; nothing to do (use --force to rebuild)")
        return True

    def finish(self, output: Path, *, options: dict[str, Any], inputs: dict[str, Path],
               counts: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the manifest of a finished output and report it."""
        manifest = artifacts.write_manifest(
            output, stage=self.stage, dataset=self.dataset, options=options, inputs=inputs,
            counts=counts, started=self.started, extra=extra,
        )
        summary = ", ".join(f"{k}={v}" for k, v in counts.items() if not isinstance(v, (list, dict)))
        click.echo(f"[{self.stage}] wrote {output} ({summary}) in {time.time() - self.started:.1f}s")
        return manifest


def dataclass_options(cls: type, help: dict[str, str], skip: set[str] = frozenset()) -> Callable:
    """One `--field-name` option per field of a dataclass of hyperparameters (default None: unset).

    Unset options fall back to pipelines/<dataset>.toml and then to the dataclass default, which
    the help text shows, so every hyperparameter is an option without a hand-written list.
    """

    def decorate(func: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip or f.default is dataclasses.MISSING:
                continue
            kind = type(f.default) if isinstance(f.default, (bool, int, float, str)) else str
            text = f"{help.get(f.name, '')} [default: {f.default}, or the dataset's pipelines/<dataset>.toml]".strip()
            if kind is bool:
                flag = f.name.replace("_", "-")
                func = click.option(f"--{flag}/--no-{flag}", f.name, default=None, help=text)(func)
            else:
                func = click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=None, help=text)(func)
        return func

    return decorate
