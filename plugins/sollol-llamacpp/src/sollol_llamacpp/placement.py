"""Where the llama.cpp plugin wants a request: a pure function of the request, the fleet
snapshot (with the :class:`~sollol_llamacpp.facts.ShardingFacts` it learnt) and the settings.

Shard when forced (by name, or by ``distributed_threshold_params``), or when no healthy node that
holds the model has the memory to run it whole; embeddings stay on whole-model nodes; else defer
to the next policy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sollol_core.types import (
    Decision,
    FleetSnapshot,
    Health,
    InferenceRequest,
    NodeSnapshot,
    Operation,
    Role,
    ShardPlan,
    model_key,
)
from sollol_llamacpp.calibration import scaled
from sollol_llamacpp.estimate import ModelFootprint
from sollol_llamacpp.facts import ShardingFacts
from sollol_llamacpp.planner import ModelNeeds, NoPlanFits, WorkerCapacity, plan_shards
from sollol_llamacpp.settings import LlamacppSettings

GIB = 2**30
POLICY = "llamacpp-shard"


def place(request: InferenceRequest, fleet: FleetSnapshot, options: LlamacppSettings,
          facts: ShardingFacts) -> Decision | None:
    """A shard plan (or a refusal that says why none fits), or None to defer."""
    model = request.model
    key = model_key(model)
    # the workers this model's coordinator holds, known before any probe has seen them busy
    own = facts.held.get(key, frozenset())
    workers = [n for n in fleet.nodes if n.role is Role.WORKER and n.holds_key(key)
               and (n.health is Health.UP or (n.health is Health.BUSY and (
                   n.has_loaded(model) or n.endpoint.key in own)))]
    if not workers:  # nothing to shard over: the common case of a fleet of whole-model nodes
        return None
    footprint = facts.footprints.get(key)
    holders = [n for n in fleet.healthy(Role.NODE) if n.holds_key(key)]
    if holders and request.operation in (Operation.EMBED, Operation.EMBEDDINGS):
        return None
    forced = any(key == model_key(m) for m in options.shard)
    threshold = options.distributed_threshold_params
    big = bool(threshold and footprint and footprint.parameter_count >= threshold * 1e9)
    whole_bytes = _whole_bytes(model, footprint, holders, options)
    wanted = whole_bytes * (1 + options.memory_margin)
    room: list[int] = []
    for holder in holders:  # the first that can run it whole ends the search
        free = fleet.free_bytes_of(holder)
        if holder.has_loaded(model) or free is None or free >= wanted:
            if not forced and not big:
                return None
            break
        room.append(free)
    if forced:
        why = "forced by [llamacpp] shard"
    elif big and footprint is not None and threshold is not None:
        why = (f"{footprint.parameter_count / 1e9:.2f}B parameters is over the "
               f"distributed_threshold_params of {threshold:g}B")
    elif holders:
        largest = max(room)
        why = (f"needs {whole_bytes / GIB:.2f} GiB (+{options.memory_margin:.0%} margin) whole; "
               f"largest node holding it has {largest / GIB:.2f} GiB free")
    else:
        why = "no healthy node holds it whole"
    # A coordinator already serving this model keeps its workers: reuse beats reload.
    serving = sorted((n for n in workers if n.has_loaded(model) or n.endpoint.key in own),
                     key=lambda n: n.endpoint.key)
    if not own <= {n.endpoint.key for n in serving}:
        serving = []  # one of its workers is gone: its coordinator is being retired
    if serving:
        plan = ShardPlan(workers=tuple(n.endpoint for n in serving), tensor_split=())
        return Decision.sharded(request, plan, policy=POLICY, reason=(
            f"{why}; reusing its coordinator on {len(serving)} RPC workers"))
    if footprint is None:
        unreadable = facts.unreadable.get(key, "its GGUF has not been read yet")
        return Decision.refuse(request, policy=POLICY, reason=f"{why}, but {unreadable}")
    claimed = facts.claimed(besides=key)
    needs = worker_needs(footprint, options, facts.factors.get(key, 1.0))
    try:
        plan, replaced = _plan_over_free_or_idle(needs, workers, claimed, facts, key, options)
    except NoPlanFits as exc:
        return Decision.refuse(request, policy=POLICY, reason=f"{why}, but {exc}")
    replacing = (f"; replacing the idle coordinator{'s' if len(replaced) > 1 else ''} of "
                 f"{', '.join(replaced)}" if replaced else "")
    layers = "/".join(str(count) for count in plan.layers)
    # a new coordinator may take up to its start-up limit before the first token
    return Decision.sharded(request, plan, policy=POLICY, reason=(
        f"{why}; needs {needs.total_bytes / GIB:.2f} GiB on the workers; sharded over "
        f"{len(plan.workers)} RPC workers ({options.layer_strategy}, layers {layers})"
        f"{replacing}"), startup_s=options.coordinator_timeout_s)


def _plan_over_free_or_idle(needs: ModelNeeds, workers: Sequence[NodeSnapshot],
                            claimed: frozenset[str], facts: ShardingFacts, key: str,
                            options: LlamacppSettings) -> tuple[ShardPlan, list[str]]:
    """A plan over the free workers; else, as Ollama unloads an idle model to load another,
    over those and the workers of other models' idle coordinators (the one that holds fewest
    first), with the models whose coordinators would go. Raises the first NoPlanFits."""
    usable = [n for n in workers if n.health is Health.UP and n.endpoint.key not in claimed]
    try:
        return _plan(needs, usable, options), []
    except NoPlanFits as first:
        replaced: list[str] = []
        idle = sorted(facts.idle_holders(besides=key).items(), key=lambda kv: (len(kv[1]), kv[0]))
        for other, held in idle:
            replaced.append(other)
            usable += [n for n in workers if n.health is Health.UP and n.endpoint.key in held]
            try:
                return _plan(needs, usable, options), replaced
            except NoPlanFits:
                continue
        raise first


def _plan(needs: ModelNeeds, workers: Sequence[NodeSnapshot],
          options: LlamacppSettings) -> ShardPlan:
    return plan_shards(needs, [WorkerCapacity.of(n) for n in workers],
                       strategy=options.layer_strategy,  # type: ignore[arg-type]
                       min_workers=options.min_shard_workers)


@functools.lru_cache(maxsize=64)  # a pure function of frozen values: any router may share it
def _total_bytes(footprint: ModelFootprint, context: int, parallel: int) -> int:
    return footprint.total_bytes(context, parallel)


def _whole_bytes(model: str, footprint: ModelFootprint | None,
                 holders: Sequence[NodeSnapshot], options: LlamacppSettings) -> int:
    """What one process needs to run ``model`` whole: the estimate from its GGUF where known,
    else its size on a node plus a fifth for the KV cache and buffers."""
    if footprint is not None:
        return _total_bytes(footprint, options.context_size, options.parallel)
    key = model_key(model)
    size = max((m.size_bytes for n in holders for m in n.models if model_key(m.name) == key),
               default=0)
    return int(size * 1.2)


def worker_needs(footprint: ModelFootprint, options: LlamacppSettings,
                 factor: float = 1.0) -> ModelNeeds:
    """What the model needs on the workers, scaled by what earlier loads measured."""
    needs = ModelNeeds(
        layer_bytes=footprint.per_layer_total(options.context_size, options.parallel),
        last_bytes=footprint.non_layer_bytes,
        overhead_bytes=footprint.compute_buffer_bytes(options.context_size,
                                                      parallel=options.parallel))
    return scaled(needs, factor)
