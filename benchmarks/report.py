"""What every benchmark script shares: the machine it ran on, percentiles, the JSON it writes."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python_loop_ms": python_loop_ms()}


def python_loop_ms() -> float:
    """Milliseconds for one million turns of a plain Python loop (best of 5): the machine's speed
    for interpreted code at the time, so that runs on a busy or slower host can be compared."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 1)


def percentile(samples: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1-99), inclusive method; the sample itself when there is one."""
    if len(samples) < 2:
        return samples[0] if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def write(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}", file=sys.stderr)
