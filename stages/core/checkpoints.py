"""Checkpoints of the training loops (report models, PRIOR pretraining, the diagnosis classifier).

A checkpoint is written atomically (a crash leaves the previous one), carries a header that names
the job (its options and inputs) so that only the same job resumes from it, and holds the random
streams, so that a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stages.core.artifacts import read_manifest


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, header: Any, device: torch.device | str, what: str = "run",
                    length: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The checkpoint at `path` when the job with this header wrote it, or a shorter run of it (see
    `extends`); None when there is none. A checkpoint of another job is refused (ValueError), never
    silently mixed into this one."""
    if not path.exists():
        return None
    saved = torch.load(path, map_location=device, weights_only=False)
    if saved.get("header") != header and not extends(saved.get("header"), header, length):
        raise ValueError(f"{path} belongs to a {what} with other options or inputs; use another --name, or "
                         "--force to start this run again")
    return saved


def extends(saved: Any, header: Any, length: Sequence[str] | None) -> bool:
    """Whether `header` names the job of `saved` run for longer: equal but for the option at the key
    path `length` (into the options), which is larger. Only loops whose learning-rate schedule and
    batches do not depend on the total length pass a `length`: for them the run continued from the
    shorter one's last.pt is exactly the longer run."""
    if length is None or not isinstance(saved, dict) or not isinstance(header, dict):
        return False
    saved, header = copy.deepcopy(saved), copy.deepcopy(header)
    *parents, key = length
    old, new = saved["options"], header["options"]
    for name in parents:
        old, new = old.get(name, {}), new.get(name, {})
    before, after = old.pop(key, None), new.pop(key, None)
    return saved == header and before is not None and after is not None and after > before


def run_header(options: dict[str, Any], inputs: dict[str, Path]) -> dict[str, Any]:
    """What names a training job in its checkpoints: its options and its inputs' checksums."""
    return {"options": options, "inputs": {k: (read_manifest(p) or {}).get("sha256") for k, p in sorted(inputs.items())}}


def finished_with_other_header(run_dir: Path, final: str, header: Any, length: Sequence[str] | None = None) -> bool:
    """Whether `run_dir` holds a finished run (its `final` file written) whose last.pt another job
    wrote (a shorter run of this job, see `extends`, is not another job)."""
    last = run_dir / "last.pt"
    if not (run_dir / final).exists() or not last.exists():
        return False
    saved = torch.load(last, map_location="cpu", weights_only=False).get("header")
    return saved != header and not extends(saved, header, length)


def clear_stale_run(run_dir: Path, final: str, header: Any, force: bool, log: Callable[[str], None],
                    length: Sequence[str] | None = None) -> None:
    """Empty `run_dir` for a new job: always with --force, and when it holds a finished run of other
    options or inputs (stale: its results are replaced). An unfinished run of another job is kept,
    and its last.pt refused when loaded, so that an interrupted run is never lost to a typo; a
    finished shorter run of this job is kept for it to continue (`length`, see `extends`)."""
    if not run_dir.exists():
        return
    if force:
        shutil.rmtree(run_dir)
    elif finished_with_other_header(run_dir, final, header, length):
        log(f"{run_dir} holds a finished run with other options or inputs; training it again "
            "(its results are replaced)")
        shutil.rmtree(run_dir)


def random_state(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_state(rng: dict[str, Any], generator: torch.Generator) -> None:
    """Continue the random streams `random_state` saved (mid-epoch resume)."""
    torch.set_rng_state(rng["torch"].cpu())
    generator.set_state(rng["generator"].cpu())
    if rng["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
