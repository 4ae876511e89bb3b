"""What is asked and what is decided: the :class:`Operation` kinds, the client's
:class:`InferenceRequest`, and a placement policy's :class:`Decision` (with the
:class:`Candidate` nodes it weighed and, for a model split over RPC workers, its
:class:`ShardPlan`).

Imports :mod:`.endpoints` only.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

# Imported at run time, not under TYPE_CHECKING: cattrs resolves the string annotations of these
# classes in this module's namespace.
from sollol_core.types.endpoints import Endpoint


class Operation(enum.Enum):
    """The kinds of request the router places (named after Ollama's endpoints)."""

    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"
    #: The legacy ``/api/embeddings``: one ``prompt``, one unnormalised ``embedding``.
    EMBEDDINGS = "embeddings"
    #: ``/api/show``: model details, answered by a node that holds the model.
    SHOW = "show"


def new_request_id() -> str:
    return uuid.uuid4().hex


@frozen
class InferenceRequest:
    """One client request, parsed and validated, in Ollama's shape.

    ``body`` is the request body as the client sent it (Ollama field names); treat it as read-only.
    """

    operation: Operation
    model: str
    body: Mapping[str, Any]
    priority: int = 5
    stream: bool = False
    id: str = field(factory=new_request_id)
    received_at: float = field(factory=time.time)
    #: HTTP headers executors send upstream with this attempt (W3C ``traceparent`` from tracing
    #: plugins); the router sets them per attempt from :func:`sollol_on_attempt`.
    upstream_headers: Mapping[str, str] = field(factory=dict)
    #: This request's own time limit (the Python API's ``timeout=``): its whole run, and the
    #: longest its first chunk may take. None: the routing settings' limits.
    timeout_s: float | None = None

    @classmethod
    def chat(cls, model: str, messages: list[Mapping[str, Any]], *, priority: int = 5,
             stream: bool = False, **fields: Any) -> InferenceRequest:
        body = {"model": model, "messages": list(messages), "stream": stream, **fields}
        return cls(operation=Operation.CHAT, model=model, body=body, priority=priority,
                   stream=stream)

    @classmethod
    def generate(cls, model: str, prompt: str, *, priority: int = 5, stream: bool = False,
                 **fields: Any) -> InferenceRequest:
        body = {"model": model, "prompt": prompt, "stream": stream, **fields}
        return cls(operation=Operation.GENERATE, model=model, body=body, priority=priority,
                   stream=stream)

    @classmethod
    def embed(cls, model: str, input: str | list[str], *, priority: int = 5,
              **fields: Any) -> InferenceRequest:
        body = {"model": model, "input": input, **fields}
        return cls(operation=Operation.EMBED, model=model, body=body, priority=priority)


@frozen
class Candidate:
    """One node a policy considered, with its score (higher is better) and why."""

    endpoint: Endpoint
    score: float
    note: str = ""


@frozen
class ShardPlan:
    """A model split by layers over RPC workers, in the order the coordinator gets them."""

    workers: tuple[Endpoint, ...]
    tensor_split: tuple[float, ...]
    layers: tuple[int, ...] = ()


@frozen
class Decision:
    """Where one request runs and why. Made by a placement policy, seen by every observer."""

    request_id: str
    model: str
    policy: str
    reason: str
    target: Endpoint | None = None
    plan: ShardPlan | None = None
    candidates: tuple[Candidate, ...] = ()
    decided_at: float = field(factory=time.time)
    #: Seconds the backend may need before it can answer at all (a coordinator loading the
    #: model), allowed on top of the first-chunk limit.
    startup_s: float = 0.0
    #: The policy's predicted seconds from the start on the node to the answer's end (None: no
    #: prediction); the router expects the slot back then.
    service_s: float | None = None

    @classmethod
    def whole(cls, request: InferenceRequest, target: Endpoint, *, policy: str, reason: str,
              candidates: tuple[Candidate, ...] = (), service_s: float | None = None,
              ) -> Decision:
        return cls(request_id=request.id, model=request.model, policy=policy, reason=reason,
                   target=target, candidates=candidates, service_s=service_s)

    @classmethod
    def sharded(cls, request: InferenceRequest, plan: ShardPlan, *, policy: str, reason: str,
                candidates: tuple[Candidate, ...] = (), startup_s: float = 0.0) -> Decision:
        return cls(request_id=request.id, model=request.model, policy=policy, reason=reason,
                   plan=plan, candidates=candidates, startup_s=startup_s)

    @classmethod
    def refuse(cls, request: InferenceRequest, *, policy: str, reason: str,
               candidates: tuple[Candidate, ...] = ()) -> Decision:
        """No place for this request; ``reason`` tells the client why."""
        return cls(request_id=request.id, model=request.model, policy=policy, reason=reason,
                   candidates=candidates)

    @property
    def placed(self) -> bool:
        return self.target is not None or self.plan is not None

    @property
    def backend(self) -> str:
        """Short label of where it runs, for headers and logs."""
        if self.plan is not None:
            return "sharded:" + ",".join(w.address for w in self.plan.workers)
        return self.target.key if self.target is not None else "none"
