"""HDF5 outputs filled chunk by chunk that survive an interruption.

The file is built under `<name>.partial` next to its final place and records how many items are
done and a key describing the job (options, inputs). A rerun of the same job reopens it and
continues; a different job starts over. Only a finished file is renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from stages.core.artifacts import atomic_output

STR = h5py.string_dtype()


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def open_partial(final: Path, key: str, create: Callable[[h5py.File], None]) -> h5py.File:
    """The partial file of this job (created with `create` when new); `attrs['n_done']` says where to go on."""
    path = partial_path(final)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        try:
            handle = h5py.File(path, "a")
            if handle.attrs.get("resume_key") == key:
                if handle.attrs["n_done"]:
                    tqdm.write(f"resuming {path.name}: {int(handle.attrs['n_done'])} items already written")
                return handle
            handle.close()
        except OSError:
            pass  # an unreadable partial file is simply started over
        path.unlink()
    handle = h5py.File(path, "w")
    handle.attrs["resume_key"] = key
    handle.attrs["n_done"] = 0
    create(handle)
    return handle


def mark_done(handle: h5py.File, n_done: int) -> None:
    handle.attrs["n_done"] = n_done
    handle.flush()


def commit(handle: h5py.File, final: Path) -> None:
    """Close the finished partial file and move it into place atomically."""
    del handle.attrs["n_done"], handle.attrs["resume_key"]
    handle.close()
    with atomic_output(final) as tmp:
        os.replace(partial_path(final), tmp)


def growable(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: object, **kwargs: object) -> h5py.Dataset:
    """An empty dataset that grows along its first axis, one row per chunk by default."""
    return group.create_dataset(name, (0, *shape), dtype, maxshape=(None, *shape),
                                chunks=kwargs.pop("chunks", (1, *shape) if shape else (4096,)), **kwargs)


def append(dataset: h5py.Dataset, values: np.ndarray | list) -> None:
    values = np.asarray(values, dtype=object if dataset.dtype == STR else dataset.dtype)
    start = dataset.shape[0]
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values
