"""Per-dataset defaults, read from `pipelines/<dataset>.toml` and overridden by CLI options."""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from stages.core.errors import StageError

DATASETS = ("demo", "iu_xray", "mimic")
ALIASES = {"mimic_cxr": "mimic", "iu": "iu_xray"}


def pipelines_dir() -> Path:
    """`$RRG_PIPELINES`, else the repository's `pipelines/` next to the package."""
    return Path(os.environ.get("RRG_PIPELINES", Path(__file__).resolve().parents[2] / "pipelines"))


def canonical_dataset(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise StageError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)} (or mimic_cxr)")
    return name


@cache
def dataset_config(dataset: str) -> dict[str, Any]:
    path = pipelines_dir() / f"{dataset}.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"no pipeline configuration {path}; set RRG_PIPELINES to the repo's pipelines/") from None
    except tomllib.TOMLDecodeError as error:
        raise StageError(f"{path} is not valid TOML: {error}") from None


def resolve(dataset: str, section: str, given: dict[str, Any], required: tuple[str, ...] = (),
            variant: str | None = None, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options of one stage, later layers winning: the dataset's [section], `fallback` (a method's
    reference settings, which a dataset-wide value meant for other methods must not override), the
    dataset's [section.variant] sub-table, then the CLI values that were given."""
    table = dataset_config(dataset).get(section, {})
    layers = [{k: v for k, v in table.items() if not isinstance(v, dict)}, fallback or {},
              table.get(variant, {}) if variant else {}]
    options = {key.replace("-", "_"): value for layer in layers for key, value in layer.items()}
    options.update({key: value for key, value in given.items() if value is not None or key not in options})
    missing = [key for key in required if options.get(key) is None]
    if missing:
        raise StageError(
            f"no value for {', '.join('--' + m.replace('_', '-') for m in missing)}: give it on the "
            f"command line or set it under [{section}] in {pipelines_dir() / (dataset + '.toml')}"
        )
    return options
