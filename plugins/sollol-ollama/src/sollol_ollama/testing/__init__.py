"""A protocol-faithful Ollama server emulator for tests.

Example::

    from sollol_ollama.testing import OllamaEmulator

    async with OllamaEmulator(name="gpu-a") as node:
        client = ollama.AsyncClient(host=node.url)
        reply = await client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content.startswith("gpu-a")

It binds 127.0.0.1 on a free port by default, answers the native routes (``/``, ``/api/version``,
``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/generate``, ``/api/chat``, ``/api/embed``,
``/api/embeddings``) with Ollama's shapes, statuses and error messages, streams NDJSON, models
``parallel`` slots and the ``max_queue`` pending limit (503), and can script failures with
:meth:`OllamaEmulator.fail_next`. :class:`EmulatorFleet` runs several nodes at once. With a
:class:`CostModel` a node also spends time on prefill, keeps each slot's last sequence as a
prompt cache (the next turn of a conversation evaluates only what is new) and reports honest
``prompt_eval_count`` and durations (its ``total_duration`` includes the time it queued).
"""

from .cost import CostModel
from .emulator import OllamaEmulator
from .fleet import EmulatorFleet
from .models import DEFAULT_MODELS, EmulatedModel
from .protocol import BUSY, FAILURE_KINDS, FAILURE_MESSAGE, FailureKind

__all__ = [
    "BUSY",
    "DEFAULT_MODELS",
    "FAILURE_KINDS",
    "FAILURE_MESSAGE",
    "CostModel",
    "EmulatedModel",
    "EmulatorFleet",
    "FailureKind",
    "OllamaEmulator",
]
