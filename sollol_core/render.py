"""Rich tables for the command line. Pure functions from values to renderables."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.table import Table

from sollol_core.breaker import CircuitSnapshot, CircuitState
from sollol_core.plugins import PluginInfo
from sollol_core.types import FleetSnapshot, Health, NodeSnapshot, Telemetry

_HEALTH_STYLE = {Health.UP: "green", Health.DOWN: "red", Health.BUSY: "yellow",
                 Health.INCOMPATIBLE: "magenta"}


def size(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{value} B"
        value /= 1024  # type: ignore[assignment]
    return f"{value:.1f} TiB"


def _memory(node: NodeSnapshot) -> str:
    if not node.devices:
        return "-"
    return f"{size(node.free_bytes)} free of {size(node.total_bytes)}"


def _models(node: NodeSnapshot) -> str:
    if not node.models:
        return "-"
    names = [f"{m.name}{' (loaded)' if m.loaded else ''}" for m in node.models[:4]]
    more = len(node.models) - 4
    return ", ".join(names) + (f" +{more} more" if more > 0 else "")


def nodes_table(fleet: FleetSnapshot) -> Table:
    table = Table(title="Nodes", title_justify="left")
    for column in ("endpoint", "found via", "role", "health", "latency", "version", "memory",
                   "busy/slots", "models", "detail"):
        # where a node came from (config, OLLAMA_HOST, localhost...) is read whole, never folded
        table.add_column(column, overflow="fold", no_wrap=column == "found via")
    for node in sorted(fleet.nodes, key=lambda n: n.endpoint.key):
        style = _HEALTH_STYLE[node.health]
        table.add_row(
            node.endpoint.key, node.endpoint.source, node.role.value,
            f"[{style}]{node.health.value}[/]",
            f"{node.latency_ms:.1f} ms" if node.latency_ms is not None else "-",
            node.version or "-", _memory(node),
            f"{node.in_flight}/{node.parallel} ({node.slots_source})",
            _models(node), node.detail or "")
    return table


def telemetry_table(reports: Sequence[Telemetry]) -> Table:
    table = Table(title="Machines", title_justify="left")
    for column in ("host", "from", "CPUs", "load (1 min)", "RAM free", "devices"):
        table.add_column(column, overflow="fold")
    for report in reports:
        devices = "; ".join(
            f"{d.name}: {size(d.memory_free_bytes)} free of {size(d.memory_total_bytes)}"
            for d in report.devices) or "-"
        table.add_row(
            report.host, report.source, str(report.cpu_count or "-"),
            f"{report.load_1m:.2f}" if report.load_1m is not None else "-",
            f"{size(report.ram_free_bytes)} of {size(report.ram_total_bytes)}", devices)
    return table


def plugins_table(infos: Sequence[PluginInfo]) -> Table:
    table = Table(title="Plugins", title_justify="left")
    for column in ("name", "state", "distribution", "version", "hooks"):
        table.add_column(column, overflow="fold")
    styles = {"enabled": "green", "blocked": "yellow", "not allowed": "yellow", "failed": "red"}
    for info in infos:
        state = f"[{styles[info.state]}]{info.state}[/]"
        if info.error:
            state += f" ({info.error})"
        table.add_row(info.name, state, info.distribution or "-", info.version or "-",
                      ", ".join(info.hooks) or "-")
    return table


def circuits_table(circuits: Sequence[CircuitSnapshot]) -> Table:
    table = Table(title="Circuits", title_justify="left")
    for column in ("node", "state", "failure ratio", "samples", "next retry"):
        table.add_column(column, overflow="fold")
    styles = {CircuitState.CLOSED: "green", CircuitState.OPEN: "red",
              CircuitState.HALF_OPEN: "yellow"}
    for circuit in circuits:
        retry = "-"
        if circuit.next_retry_at is not None:
            retry = datetime.fromtimestamp(circuit.next_retry_at).strftime("%H:%M:%S")
        table.add_row(circuit.node, f"[{styles[circuit.state]}]{circuit.state.value}[/]",
                      f"{circuit.failure_ratio:.0%}", str(circuit.samples), retry)
    return table
