"""The fleet: known endpoints and the latest snapshot of each, refreshed in the background.

Discovery and probes run here, never on the request path; the router only reads
:meth:`Fleet.snapshot`, which is a frozen value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from attrs import define, evolve, field

from sollol_core.capacity import CapacityBook
from sollol_core.config import Settings
from sollol_core.plugins import Plugins
from sollol_core.stats import PerformanceBook
from sollol_core.types import Endpoint, FleetSnapshot, NodeSnapshot, Role, Telemetry, model_key

log = logging.getLogger(__name__)


@define
class Fleet:
    plugins: Plugins
    settings: Settings
    _endpoints: dict[str, Endpoint] = field(factory=dict)
    _nodes: dict[str, NodeSnapshot] = field(factory=dict)
    _telemetry: tuple[Telemetry, ...] = ()
    _task: asyncio.Task[None] | None = None
    performance: PerformanceBook = field(factory=PerformanceBook)
    _local_host: str = field(factory=socket.gethostname)
    #: Called with every probe's snapshot (the router's circuit breakers listen).
    probe_listeners: list[Callable[[NodeSnapshot], None]] = field(factory=list)
    #: Every model a whole-model node has listed since the fleet started (normalised names).
    _models_seen: set[str] = field(factory=set)
    #: Slots learnt from how nodes answer (see :mod:`sollol_core.capacity`).
    capacity: CapacityBook = field(init=False)
    #: The plugin's default slots of each node that has no number of its own.
    _setting_slots: dict[str, int] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.capacity = CapacityBook(on_change=self._relearn)

    def snapshot(self) -> FleetSnapshot:
        """Frozen view for placement; snapshots older than ``stale_after_s`` are dropped."""
        horizon = time.time() - self.settings.health.stale_after_s
        nodes = tuple(n for n in self._nodes.values() if n.taken_at >= horizon)
        return FleetSnapshot(nodes=nodes, telemetry=self._telemetry,
                             performance=self.performance.snapshot(), local_host=self._local_host,
                             facts=self.plugins.fleet_facts())

    def node(self, key: str) -> NodeSnapshot | None:
        """The latest snapshot of one node, without building a whole fleet snapshot (admission
        asks this on the request path)."""
        return self._nodes.get(key)

    def knows_model(self, model: str) -> bool:
        """Whether a whole-model node has listed ``model`` since the fleet started, even if that
        node is down now (its name then means that model, not any other file)."""
        return model_key(model) in self._models_seen

    def add(self, endpoint: Endpoint) -> None:
        """Track an endpoint that discovery would not find (e.g. one the Python API was given)."""
        self._endpoints.setdefault(endpoint.key, endpoint)

    def record(self, snapshot: NodeSnapshot) -> None:
        """Replace what we know of one node (probes; executors after a request)."""
        self._nodes[snapshot.endpoint.key] = self._with_learned(snapshot)

    def _with_learned(self, snapshot: NodeSnapshot) -> NodeSnapshot:
        """The snapshot with the slots learnt for its node, where it has none of its own."""
        if snapshot.slots_source != "setting":
            return snapshot
        key = snapshot.endpoint.key
        self._setting_slots[key] = snapshot.parallel
        if not self.capacity.knows(key):
            return snapshot
        slots = self.capacity.slots(key, snapshot.parallel)
        return snapshot if slots == snapshot.parallel else evolve(
            snapshot, parallel=slots, slots_source="learned")

    def _relearn(self, key: str) -> None:
        node, setting = self._nodes.get(key), self._setting_slots.get(key)
        if node is None or setting is None:
            return
        slots = self.capacity.slots(key, setting)
        if slots != node.parallel:
            log.info("%s serves %d request(s) at once, from how it answered", key, slots)
        self._nodes[key] = evolve(node, parallel=slots,
                                  slots_source="learned" if slots != setting else "setting")

    def adjust_in_flight(self, key: str, delta: int) -> None:
        node = self._nodes.get(key)
        if node is not None:
            self._nodes[key] = node.with_in_flight(max(node.in_flight + delta, 0))

    async def refresh(self) -> FleetSnapshot:
        """Discover, probe every endpoint and collect telemetry, concurrently; then snapshot."""
        for endpoint in await self.plugins.discover(self.settings):
            self._endpoints.setdefault(endpoint.key, endpoint)
        endpoints = list(self._endpoints.values())
        telemetry_task = asyncio.ensure_future(self.plugins.collect_telemetry(self.settings))
        snapshots = await asyncio.gather(*(self._probe(e) for e in endpoints))
        telemetry = await telemetry_task
        for snapshot in snapshots:
            if snapshot is not None:
                if snapshot.role is Role.NODE:
                    self._models_seen.update(model_key(m.name) for m in snapshot.models)
                for listener in self.probe_listeners:
                    listener(snapshot)
                known = self._nodes.get(snapshot.endpoint.key)
                # in-flight counts are ours, not the probe's: keep them across probes
                in_flight = known.in_flight if known else snapshot.in_flight
                self._nodes[snapshot.endpoint.key] = self._with_learned(
                    evolve(snapshot, in_flight=in_flight))
        self._telemetry = tuple(telemetry)
        return self.snapshot()

    async def _probe(self, endpoint: Endpoint) -> NodeSnapshot | None:
        timeout = self.settings.health.timeout_s
        try:
            return await asyncio.wait_for(self.plugins.probe(endpoint, self.settings), timeout)
        except TimeoutError:
            return NodeSnapshot.down(endpoint, f"no answer within {timeout:g} s")
        except Exception as exc:  # a probe bug must not stop the schedule
            log.warning("probe of %s failed: %r", endpoint.key, exc)
            return NodeSnapshot.down(endpoint, f"probe failed: {exc!r}")

    async def start(self) -> None:
        """First refresh now, then every ``health.interval_s`` until :meth:`stop`."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="sollol-fleet-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health.interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("fleet refresh failed")
