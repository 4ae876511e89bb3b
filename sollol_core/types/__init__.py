"""Domain value types shared by the core and every plugin.

All of them are frozen attrs classes: a snapshot, a request or a decision never changes after it is
made, so placement can be a pure function over them and observers can keep them without copying.
Dumb ``__init__``; construction from raw input lives in named constructors (``Endpoint.parse``,
``InferenceRequest.chat``...).

Import them from here (``from sollol_core.types import Decision``); they live in modules by topic,
each importing only those above it:

- :mod:`~sollol_core.types.endpoints`: addresses and model names: :class:`Endpoint`,
  :func:`split_host_port`, :func:`is_loopback`, :func:`model_key`, :func:`same_model`.
- :mod:`~sollol_core.types.fleet`: what probes and telemetry saw: :class:`Health`, :class:`Role`,
  :class:`DeviceMemory`, :class:`ModelInfo`, :class:`NodeSnapshot`, :class:`DeviceTelemetry`,
  :class:`ProcessMemory`, :class:`Telemetry`, :class:`Performance`, :class:`FleetSnapshot`.
- :mod:`~sollol_core.types.requests`: requests and decisions: :class:`Operation`,
  :class:`InferenceRequest`, :func:`new_request_id`, :class:`Candidate`, :class:`ShardPlan`,
  :class:`Decision`.
- :mod:`~sollol_core.types.records`: what happened: :class:`RequestRecord`,
  :class:`AttemptRecord`.
"""

from __future__ import annotations

from sollol_core.types.endpoints import (
    Endpoint,
    is_loopback,
    model_key,
    same_model,
    split_host_port,
)
from sollol_core.types.fleet import (
    DeviceMemory,
    DeviceTelemetry,
    FleetSnapshot,
    Health,
    ModelInfo,
    NodeSnapshot,
    Performance,
    ProcessMemory,
    Role,
    Telemetry,
)
from sollol_core.types.records import AttemptRecord, RequestRecord
from sollol_core.types.requests import (
    Candidate,
    Decision,
    InferenceRequest,
    Operation,
    ShardPlan,
    new_request_id,
)

__all__ = [
    "AttemptRecord",
    "Candidate",
    "Decision",
    "DeviceMemory",
    "DeviceTelemetry",
    "Endpoint",
    "FleetSnapshot",
    "Health",
    "InferenceRequest",
    "ModelInfo",
    "NodeSnapshot",
    "Operation",
    "Performance",
    "ProcessMemory",
    "RequestRecord",
    "Role",
    "ShardPlan",
    "Telemetry",
    "is_loopback",
    "model_key",
    "new_request_id",
    "same_model",
    "split_host_port",
]
