"""The closed loop: what a coordinator's workers really hold, against what was estimated.

After a coordinator loads, its log (llama-server runs with ``-lv 4``) says per RPC device how much
model, KV cache and compute buffer it allocated. The ratio of that to the estimate becomes a
correction factor per (model, worker kind) that later estimates for that model are scaled by.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from attrs import define, field, frozen

from sollol_core.types import Endpoint, model_key
from sollol_llamacpp.planner import ModelNeeds

#: "load_tensors: RPC0[127.0.0.1:50052] model buffer size =    35.82 MiB" (and KV, compute).
_BUFFER = re.compile(
    r"RPC\d+\[(?P<address>[^\]]+)\]\s+(?:model|KV|compute) buffer size\s*=\s*(?P<mib>[\d.]+) MiB")
WORKER_KIND = "rpc"


def held_bytes(log_text: str) -> dict[str, int]:
    """Bytes each RPC worker (by address) was asked to hold, from a coordinator's load log."""
    held: dict[str, int] = {}
    for match in _BUFFER.finditer(log_text):
        held[match["address"]] = held.get(match["address"], 0) + int(
            float(match["mib"]) * 2**20)
    return held


def planned_bytes(needs: ModelNeeds, workers: Sequence[Endpoint],
                  layers: Sequence[int]) -> dict[str, int]:
    """What the estimate put on each worker for a plan (layers in plan order)."""
    planned: dict[str, int] = {}
    start = 0
    for index, (worker, count) in enumerate(zip(workers, layers, strict=True)):
        total = sum(needs.layer_bytes[start:start + count]) + needs.overhead_bytes
        if index == len(workers) - 1:
            total += needs.last_bytes
        planned[worker.address] = total
        start += count
    return planned


@frozen
class Correction:
    model: str
    kind: str
    factor: float
    estimated_bytes: int
    measured_bytes: int


@define
class Calibration:
    """Correction factors learnt from coordinators that loaded."""

    by_model: dict[tuple[str, str], Correction] = field(factory=dict)

    def factor(self, model: str, kind: str = WORKER_KIND) -> float:
        found = self.by_model.get((model_key(model), kind))
        return found.factor if found is not None else 1.0

    def learn(self, model: str, log_path: Path, planned: Mapping[str, int],
              kind: str = WORKER_KIND) -> Correction | None:
        """Compare a coordinator's log with the plan's estimate; None if the log says nothing."""
        try:
            held = held_bytes(log_path.read_text(errors="replace"))
        except OSError:
            return None
        common = [address for address in planned if address in held]
        estimated = sum(planned[a] for a in common)
        measured = sum(held[a] for a in common)
        if not common or estimated <= 0 or measured <= 0:
            return None
        # the estimate already carries the last factor: learn the total, not the residue
        factor = round(measured / estimated * self.factor(model, kind), 4)
        correction = Correction(model, kind, factor, estimated, measured)
        self.by_model[(model_key(model), kind)] = correction
        return correction

    def scale(self, needs: ModelNeeds, model: str, kind: str = WORKER_KIND) -> ModelNeeds:
        return scaled(needs, self.factor(model, kind))

    def factors(self, kind: str = WORKER_KIND) -> dict[str, float]:
        """The factor learnt for each model key, for workers of ``kind``."""
        return {key: c.factor for (key, k), c in self.by_model.items() if k == kind}


def scaled(needs: ModelNeeds, factor: float) -> ModelNeeds:
    """``needs`` scaled by a correction factor."""
    if factor == 1.0:
        return needs
    return ModelNeeds(layer_bytes=tuple(int(b * factor) for b in needs.layer_bytes),
                      first_bytes=int(needs.first_bytes * factor),
                      last_bytes=int(needs.last_bytes * factor),
                      overhead_bytes=int(needs.overhead_bytes * factor), margin=needs.margin)
