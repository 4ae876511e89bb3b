"""Print, as JSON, what the installed nvml plugin collects on this machine, checked against NVML.

    python plugins/sollol-nvml/scripts/nvml_report.py

Runs the plugin through SOLLOL's real plugin manager (entry point, lifespan, worker thread) and
asks pynvml directly how many GPUs there are. Exits 1 when they disagree (GPUs present but not
all reported, or a report without GPUs), 0 otherwise, also on a machine without any GPU.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import pynvml  # type: ignore[import-untyped]

from sollol_core.config import PluginSettings, Settings
from sollol_core.convert import unstructure
from sollol_core.plugins import Plugins


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def nvml_device_count() -> tuple[int, str]:
    """What NVML itself says, without the plugin: (count, error or "")."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return 0, str(exc)
    try:
        return int(pynvml.nvmlDeviceGetCount()), ""
    finally:
        pynvml.nvmlShutdown()


async def collect() -> list[dict[str, Any]]:
    plugins = Plugins.load(PluginSettings(load=("nvml",)))
    async with plugins.lifespan(Settings()):
        reports = await plugins.collect_telemetry(Settings())
    found = []
    for report in reports:
        data = unstructure(report)
        for device in data["devices"]:  # what `sollol status` would show as used
            total, free = device["memory_total_bytes"], device["memory_free_bytes"]
            device["memory_used_bytes"] = None if None in (total, free) else total - free
        found.append(data)
    return found


def main() -> int:
    recorder = _Recorder()
    logging.getLogger("sollol_nvml").addHandler(recorder)
    logging.getLogger("sollol_nvml").setLevel(logging.INFO)
    reports = asyncio.run(collect())
    count, error = nvml_device_count()
    reported = sum(len(r["devices"]) for r in reports)
    ok = reported == count
    print(json.dumps({"ok": ok, "nvml_device_count": count, "nvml_error": error,
                      "reports": reports, "log": recorder.lines}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
