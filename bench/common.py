"""What every benchmark records about its machine, and how it writes its results file.

The scripts are run as `python bench/<name>.py`, which puts this folder on sys.path.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
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
