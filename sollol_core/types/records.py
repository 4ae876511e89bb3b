"""What happened: :class:`RequestRecord` for a finished request and :class:`AttemptRecord` for
each attempt to run it on one backend, as observers see them.

Imports :mod:`.requests` only.
"""

from __future__ import annotations

from attrs import frozen

# Imported at run time, not under TYPE_CHECKING: cattrs resolves the string annotations of these
# classes in this module's namespace.
from sollol_core.types.requests import Decision, Operation


@frozen
class RequestRecord:
    """One finished request, successful or not, as observers see it."""

    request_id: str
    model: str
    operation: Operation
    ok: bool
    duration_ms: float
    decision: Decision | None = None
    error: str | None = None
    queue_ms: float = 0.0
    attempts: int = 1
    first_chunk_ms: float | None = None
    chunks: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None


@frozen
class AttemptRecord:
    """One attempt to run a request on one backend, as observers see it when it ends.

    A request fails over to another node while nothing has been sent, so it can have several
    attempts; the last successful one ran it. Token counts come from the backend's last chunk.
    """

    request_id: str
    model: str
    operation: Operation
    attempt: int
    decision: Decision
    ok: bool
    duration_ms: float
    error: str | None = None
    #: The kind of failure (an exception class name, or ``timeout``), for ``error.type``.
    error_type: str | None = None
    first_chunk_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
