"""Checkpoints of the training loops (report models, PRIOR pretraining, the diagnosis classifier).

A checkpoint is written atomically (a crash leaves the previous one), carries a header that names
the job (its options and inputs) so that only the same job resumes from it, and holds the random
streams, so that a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, header: Any, device: torch.device | str, what: str = "run") -> dict[str, Any] | None:
    """The checkpoint at `path` when the job with this header wrote it; None when there is none.
    A checkpoint of another job is refused (ValueError), never silently mixed into this one."""
    if not path.exists():
        return None
    saved = torch.load(path, map_location=device, weights_only=False)
    if saved.get("header") != header:
        raise ValueError(f"{path} belongs to a {what} with other options or inputs; use another --name, or "
                         "--force to start this run again")
    return saved


def random_state(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_state(rng: dict[str, Any], generator: torch.Generator) -> None:
    """Continue the random streams `random_state` saved (mid-epoch resume)."""
    torch.set_rng_state(rng["torch"].cpu())
    generator.set_state(rng["generator"].cpu())
    if rng["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
