"""What the llama.cpp plugin shows: its status section, Prometheus metrics and the dashboard's
"Coordinators and layers" panel, from one router's coordinators and local workers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from sollol_core.panels import Cell, Panel, PanelGroup
from sollol_core.types import ShardPlan, model_key
from sollol_llamacpp.calibration import Calibration
from sollol_llamacpp.coordinator import Coordinator, Coordinators
from sollol_llamacpp.workers import WorkerPool

PANEL = "llamacpp-coordinators"


def _running(coordinators: Coordinators | None) -> list[Coordinator]:
    return list(coordinators.running.values()) if coordinators is not None else []


def status(coordinators: Coordinators | None, pool: WorkerPool | None,
           calibration: Calibration, models: Mapping[str, Path]) -> dict[str, Any]:
    now = time.monotonic()
    running = [
        {"model": c.model, "url": c.url, "pid": c.child.pid, "alive": c.alive,
         "workers": [w.address for w in c.workers], "tensor_split": list(c.tensor_split),
         "uptime_s": round(time.time() - c.started_at, 1), "ready_s": round(c.ready_s, 2),
         "idle_s": round(now - c.last_used, 1), "log": str(c.child.log_path)}
        for c in _running(coordinators)]
    local = [{"address": w.endpoint.address, "pid": w.child.pid, "restarts": w.restarts}
             for w in (pool.workers if pool else ())]
    corrections = [{"model": c.model, "worker_kind": c.kind, "factor": c.factor,
                    "estimated_mib": round(c.estimated_bytes / 2**20, 1),
                    "measured_mib": round(c.measured_bytes / 2**20, 1)}
                   for c in calibration.by_model.values()]
    return {"coordinators": running, "local_rpc_workers": local,
            "shardable_models": sorted(models), "corrections": corrections}


def metrics(coordinators: Coordinators | None, pool: WorkerPool | None) -> list[Metric]:
    running = _running(coordinators)
    count = GaugeMetricFamily("sollol_coordinators", "llama.cpp coordinators running.")
    count.add_metric([], len(running))
    alive = GaugeMetricFamily("sollol_coordinator_alive", "1 while the coordinator's process "
                              "runs.", labels=["model", "url"])
    workers = GaugeMetricFamily("sollol_coordinator_workers",
                                "RPC workers the coordinator holds.", labels=["model", "url"])
    for c in running:
        alive.add_metric([c.model, c.url], 1.0 if c.alive else 0.0)
        workers.add_metric([c.model, c.url], len(c.workers))
    local = GaugeMetricFamily("sollol_local_rpc_workers",
                              "RPC workers the gateway runs on this machine.")
    local.add_metric([], len(pool.workers) if pool else 0)
    return [count, alive, workers, local]


def coordinators_panel(coordinators: Coordinators | None,
                       plans: Mapping[str, ShardPlan]) -> Panel:
    """Each coordinator, and which layers sit on which of its workers (from the plan it was
    started with, when that counted layers)."""
    groups = []
    for c in _running(coordinators):
        plan = plans.get(model_key(c.model))
        counts = dict(zip((w.key for w in plan.workers), plan.layers, strict=False)) \
            if plan is not None else {}
        rows: list[tuple[Cell, ...]] = []
        first: int | None = 0
        for index, worker in enumerate(c.workers):
            count = counts.get(worker.key)
            if count is not None and first is not None:
                layers = f"layers {first}–{first + count - 1} ({count})"
                first += count
            else:
                layers, first = "–", None  # the ranges after an unknown count are unknown too
            share = c.tensor_split[index] if index < len(c.tensor_split) else None
            rows.append((worker.address, layers,
                         f"{share:.0%} of tensors" if share is not None else ""))
        groups.append(PanelGroup(title=c.model, rows=tuple(rows),
                                 status="ok" if c.alive else "down", detail=c.url))
    return Panel(key=PANEL, title="Coordinators and layers",
                 columns=("RPC worker", "layers", "share"), groups=tuple(groups),
                 empty="no coordinator running")
