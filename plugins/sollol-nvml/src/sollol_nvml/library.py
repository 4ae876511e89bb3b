"""NVML's life in this process: initialised by the first measurement, shut down on exit.

Nothing happens at import. Without a driver, a library or a GPU, the first measurement logs
"no NVIDIA devices" once, with the reason, and every later one returns ``None`` at once, until
:meth:`Nvml.reset` (each router's start and stop) lets the next measurement look again.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Literal

import pynvml  # type: ignore[import-untyped]
from attrs import define, field

from sollol_core.types import Telemetry
from sollol_nvml.readings import read_gpus

log = logging.getLogger(__name__)

SOURCE = "nvml"

State = Literal["new", "up", "absent"]


@define
class Nvml:
    """NVML for one process; thread-safe (measurements run in worker threads)."""

    #: "new" until a measurement looks, then "up" (initialised, GPUs found) or "absent".
    state: State = "new"
    #: The last measurement failure logged, so a failure that repeats is logged once.
    _failure: str = ""
    _lock: threading.Lock = field(factory=threading.Lock)

    def measure(self) -> Telemetry | None:
        """This machine's GPUs, or None when it has none (or NVML fails this round)."""
        with self._lock:
            if self.state == "new":
                self.state = self._start()
            if self.state != "up":
                return None
            try:
                devices, processes = read_gpus()
            except pynvml.NVMLError as exc:
                if str(exc) != self._failure:
                    log.warning("cannot read the NVIDIA devices: %s", exc)
                self._failure = str(exc)
                return None
            self._failure = ""
        return Telemetry(host=socket.gethostname(), source=SOURCE, taken_at=time.time(),
                         devices=tuple(devices), processes=tuple(processes))

    def reset(self) -> None:
        """Shut NVML down if this object initialised it; the next measurement starts over."""
        with self._lock:
            if self.state == "up":
                _shutdown()
            self.state = "new"
            self._failure = ""

    def _start(self) -> State:
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as exc:
            log.info("no NVIDIA devices: %s", exc)
            return "absent"
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            reason = "the driver reports none"
        except pynvml.NVMLError as exc:
            count, reason = 0, str(exc)
        if count == 0:
            log.info("no NVIDIA devices: %s", reason)
            _shutdown()
            return "absent"
        log.info("NVML: %d NVIDIA device(s)", count)
        return "up"


def _shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:  # nothing left to release
        log.debug("nvmlShutdown: %s", exc)
