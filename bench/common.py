"""What every benchmark records about its machine, and how it writes its results file.

The scripts are run as `python bench/<name>.py`, which puts this folder on sys.path.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def machine() -> dict[str, Any]:
    """Date, platform, CPU count and current load: figures mean little without them."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), "python": platform.python_version()}


def write_results(name: str, results: dict[str, Any]) -> Path:
    """bench/results/<name>.json, and say where it went."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return path


def evaluated_run(run_dir: Path, split: str, dataset: str, build: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics_<split>.json, run.json) of a run that may enter a results table: its metrics are
    current and its checkpoint was selected on validation. Exits naming `build` (the command that
    makes it) otherwise."""
    from stages.compare import current
    from stages.core.errors import StageError

    path = run_dir / f"metrics_{split}.json"
    try:
        current(path, dataset)
    except StageError as error:
        sys.exit(f"{error}\n(build it with: {build})")
    run = json.loads((run_dir / "run.json").read_text())
    if not str(run.get("selected_on", "")).startswith("val"):
        sys.exit(f"{run_dir} was not selected on validation; it cannot enter the table")
    return json.loads(path.read_text()), run


def write_table(name: str, header: str, table: Any) -> None:
    """bench/results/<name>.csv and <name>.md (header + the table in Markdown), and print the latter."""
    from stages.evaluation.table import to_markdown

    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / f"{name}.csv", index=False)
    text = header + to_markdown(table)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    print(f"wrote {(RESULTS / name).relative_to(REPO)}.csv and .md")
