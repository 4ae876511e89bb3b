"""Predicted times of a request on a node, from what the fleet measured (pure arithmetic).

    first token = wait for a slot + load (if the model is not in memory) + prompt / prefill rate
    end         = first token + expected output / decode rate

On a full node the wait is until the slot this request would get frees: when the requests
running there are expected to end (each was predicted when it was placed), then an average
service time per slot for each request queued ahead beyond those.

A streamed request is ranked by its first token (what its reader waits for), among the nodes
that would also end it within :data:`STREAM_END_SLACK` of the earliest end (so that a stream is
not sent to a node that starts first but then crawls); a whole answer by its end.

Rates, load times and output lengths are moving averages per (node, model) from Ollama's own
counts (``prompt_eval_count / prompt_eval_duration``, ``eval_count / eval_duration``,
``load_duration``, ``eval_count``; llama-server's ``timings`` arrive in the same fields). A node
that never ran the model gets the median of the nodes that did (a prior), and a small head start
(:data:`EXPLORE`) so that it is tried when it is nearly as good, and so measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from attrs import frozen

from sollol_core.types import FleetSnapshot, InferenceRequest, NodeSnapshot, Performance

#: An unmeasured node's predicted time is multiplied by this: it is tried when close.
EXPLORE = 0.9
#: Output tokens assumed when neither the request (``num_predict``) nor any answer says.
DEFAULT_OUTPUT = 128.0
#: A stream goes to the earliest first token among nodes ending within this factor of the best.
STREAM_END_SLACK = 2.0
#: Characters per token, to estimate a prompt's tokens without a tokenizer.
CHARS_PER_TOKEN = 4.0


@frozen
class Prior:
    """The medians of the measured nodes, for nodes that have not run the model yet."""

    prefill: float | None
    decode: float | None
    load_ms: float | None
    service_ms: float
    #: The mean answer length of the measured nodes (None: none said).
    output_tokens: float | None = None


def prior(measured: Iterable[Performance]) -> Prior | None:
    """None when no node has told its rates for the model yet (placement then scores free
    room and latency)."""
    seen = list(measured)
    if not any(p.tokens_per_s or p.prefill_tokens_per_s for p in seen):
        return None

    def median(values: Iterable[float | None]) -> float | None:
        known = sorted(v for v in values if v)
        if not known:
            return None
        middle = len(known) // 2
        return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2

    lengths = [p.output_tokens for p in seen if p.output_tokens]
    return Prior(prefill=median(p.prefill_tokens_per_s for p in seen),
                 decode=median(p.tokens_per_s for p in seen),
                 load_ms=median(p.load_ms for p in seen),
                 service_ms=median(p.latency_ms for p in seen) or 0.0,
                 output_tokens=statistics.fmean(lengths) if lengths else None)


#: (id of a snapshot's performance tuple, model) -> (that tuple, per node, prior): the snapshots
#: evolved from one fleet snapshot (a request's facts added) share its tuple, so the medians are
#: worked out once per fleet refresh, not once per decision.
_MEASURED: dict[tuple[int, str], tuple[tuple[Performance, ...], dict[str, Performance],
                                       Prior | None]] = {}


def measured(fleet: FleetSnapshot, model: str) -> tuple[dict[str, Performance], Prior | None]:
    """What each node did with ``model`` (by node key), and the prior for the rest (None: no
    node has told its rates yet). Memoised by the identity of the snapshot's performance tuple,
    which is immutable: the answer is the same as computing it again."""
    performance = fleet.performance
    found = _MEASURED.get((id(performance), model))
    if found is not None and found[0] is performance:
        return found[1], found[2]
    seen = fleet.performance_by_node(model)
    computed = prior(seen.values()) if seen else None
    if len(_MEASURED) >= 16:
        _MEASURED.clear()
    _MEASURED[(id(performance), model)] = (performance, seen, computed)
    return seen, computed


@frozen
class Work:
    """What the request asks of a node: prompt tokens to evaluate and tokens to generate."""

    prompt_tokens: float
    output_tokens: float
    #: A stream: its reader waits for the first token, so that is what is ranked.
    streamed: bool = False

    @classmethod
    def of(cls, request: InferenceRequest, prior: Prior) -> Work:
        body = request.body
        chars = len(str(body.get("prompt") or "")) + len(str(body.get("system") or ""))
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                chars += len(str(message.get("content") or ""))
        options = body.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(limit, int) and limit >= 0:
            output = float(limit)
        else:
            output = prior.output_tokens or DEFAULT_OUTPUT
        return cls(prompt_tokens=max(chars / CHARS_PER_TOKEN, 1.0), output_tokens=output,
                   streamed=request.stream)


@frozen
class Forecast:
    #: Prompt tokens the node probably holds in its cache (from the prompt-cache index).
    cached_tokens: float
    wait_s: float
    load_s: float
    prefill_s: float
    first_token_s: float
    done_s: float
    prefill_rate: float | None
    decode_rate: float | None
    measured: bool

    def describe(self, work: Work) -> str:
        head = f"expected first token {self.first_token_s:.2f} s, end {self.done_s:.2f} s"
        if self.cached_tokens:
            head += (f": {self.cached_tokens:,.0f} of {work.prompt_tokens:,.0f} prompt tokens "
                     f"cached there")
        parts = [head]
        if self.wait_s:
            parts.append(f"{self.wait_s:.2f} s waiting for a slot")
        if self.load_s:
            parts.append(f"{self.load_s:.2f} s loading")
        if self.prefill_rate:
            parts.append(f"{work.prompt_tokens - self.cached_tokens:,.0f} prompt tokens at "
                         f"{self.prefill_rate:,.0f}/s")
        if self.decode_rate:
            parts.append(f"{work.output_tokens:,.0f} tokens at {self.decode_rate:,.0f}/s")
        if not self.measured:
            parts.append("not measured yet: the fleet's medians")
        return parts[0] + " (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else parts[0]


def forecast(node: NodeSnapshot, loaded: bool, seen: Performance | None, prior: Prior,
             work: Work, cached: float = 0.0, queued: int = 0,
             running: tuple[float, ...] = ()) -> Forecast:
    """The request's predicted times on ``node``, which holds ``cached`` of its prompt tokens,
    has ``queued`` requests waiting for it in the router's queue and runs requests expected to
    end in ``running`` seconds (soonest first)."""
    cached = _usable(cached, work)
    wait, load, prefill_s, first, done, prefill, decode = _times(node, loaded, seen, prior, work,
                                                                 cached, queued, running)
    return Forecast(cached_tokens=cached, wait_s=wait, load_s=load, prefill_s=prefill_s,
                    first_token_s=first, done_s=done, prefill_rate=prefill, decode_rate=decode,
                    measured=seen is not None)


def rank(node: NodeSnapshot, loaded: bool, seen: Performance | None, prior: Prior,
         work: Work, cached: float = 0.0, queued: int = 0,
         running: tuple[float, ...] = ()) -> tuple[float, float]:
    """(first token, end) as ranked, without building the forecast (it runs once per node):
    an unmeasured node's times are shortened by :data:`EXPLORE`."""
    times = _times(node, loaded, seen, prior, work, _usable(cached, work), queued, running)
    if seen is None:
        return times[3] * EXPLORE, times[4] * EXPLORE
    return times[3], times[4]


def _usable(cached: float, work: Work) -> float:
    """Cached tokens as prefill counts them: the prompt's last one is always evaluated."""
    return min(cached, work.prompt_tokens - 1) if cached > 0 else 0.0


def _times(node: NodeSnapshot, loaded: bool, seen: Performance | None, prior: Prior,
           work: Work, cached: float, queued: int, running: tuple[float, ...],
           ) -> tuple[float, float, float, float, float, float | None, float | None]:
    if seen is not None:
        prefill = seen.prefill_tokens_per_s or prior.prefill
        decode = seen.tokens_per_s or prior.decode
        service_ms, load_ms = seen.latency_ms, seen.load_ms or prior.load_ms
    else:
        prefill, decode = prior.prefill, prior.decode
        service_ms, load_ms = prior.service_ms, prior.load_ms
    parallel = node.parallel if node.parallel > 0 else 1
    # every slot busy: the slots free as what runs there ends, then about every service time
    # shared by the slots
    ahead = node.in_flight + queued - parallel + 1
    if ahead <= 0:
        wait = 0.0
    elif running:
        known = len(running)
        wait = (running[ahead - 1] if ahead <= known
                else running[-1] + (ahead - known) * service_ms / 1000 / parallel)
    else:
        wait = ahead * service_ms / 1000 / parallel
    load = 0.0 if loaded or not load_ms else load_ms / 1000
    prefill_s = (work.prompt_tokens - cached) / prefill if prefill else 0.0
    first = wait + load + prefill_s
    done = first + (work.output_tokens / decode if decode else service_ms / 1000)
    return wait, load, prefill_s, first, done, prefill, decode
