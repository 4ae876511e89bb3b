"""Health of one Ollama node: /api/version and /api/ps every round, /api/tags less often.

Never a completion. The result is a frozen snapshot: DOWN with the reason when the node does not
answer or does not speak Ollama's API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from attrs import define, field

from sollol_core.config import Settings
from sollol_core.types import Endpoint, Health, ModelInfo, NodeSnapshot, model_key
from sollol_ollama.settings import OllamaSettings

#: The inventory changes when someone pulls or deletes a model: rarely.
TAGS_TTL_S = 30.0


class NotOllama(Exception):
    pass


@define
class Prober:
    _tags: dict[str, tuple[float, list[dict[str, Any]]]] = field(factory=dict)

    async def probe(self, session: aiohttp.ClientSession, endpoint: Endpoint,
                    settings: Settings) -> NodeSnapshot:
        base = f"http://{endpoint.address}"
        timeout = aiohttp.ClientTimeout(total=settings.health.timeout_s)
        started = time.monotonic()
        try:
            version = await _get(session, f"{base}/api/version", timeout)
            latency_ms = (time.monotonic() - started) * 1000
            if not isinstance(version.get("version"), str):
                raise NotOllama("no version in /api/version")
            running, tags = await asyncio.gather(
                _get(session, f"{base}/api/ps", timeout), self._inventory(session, base, timeout))
        except NotOllama as exc:
            return NodeSnapshot.down(endpoint, f"not an Ollama API: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return NodeSnapshot.down(endpoint, _reason(exc, settings.health.timeout_s))
        models = _models(tags, running.get("models") or [])
        loaded = sum(1 for m in models if m.loaded)
        own = settings.section(OllamaSettings)
        configured = own.slots_for(endpoint.address)  # Ollama does not say its own
        return NodeSnapshot(
            endpoint=endpoint, health=Health.UP, taken_at=time.time(),
            latency_ms=round(latency_ms, 3), version=version["version"],
            detail=f"{len(models)} models, {loaded} loaded", models=tuple(models),
            parallel=configured or own.parallel,
            slots_source="configured" if configured else "setting")

    async def _inventory(self, session: aiohttp.ClientSession, base: str,
                         timeout: aiohttp.ClientTimeout) -> list[dict[str, Any]]:
        cached = self._tags.get(base)
        if cached is not None and time.monotonic() - cached[0] < TAGS_TTL_S:
            return cached[1]
        models = (await _get(session, f"{base}/api/tags", timeout)).get("models") or []
        self._tags[base] = (time.monotonic(), models)
        return models

    def forget(self, endpoint: Endpoint) -> None:
        """Drop the cached inventory (a node said it lacks a model it listed)."""
        self._tags.pop(f"http://{endpoint.address}", None)


async def _get(session: aiohttp.ClientSession, url: str,
               timeout: aiohttp.ClientTimeout) -> dict[str, Any]:
    async with session.get(url, timeout=timeout) as response:
        if response.status != 200:
            raise NotOllama(f"{url.split('/', 3)[-1]} answered {response.status}")
        try:
            body = await response.json(content_type=None)
        except ValueError:
            raise NotOllama(f"{url.split('/', 3)[-1]} is not JSON") from None
        if not isinstance(body, dict):
            raise NotOllama(f"{url.split('/', 3)[-1]} is not a JSON object")
        return body


def _models(tags: list[dict[str, Any]], running: list[dict[str, Any]]) -> list[ModelInfo]:
    live = {model_key(str(m.get("name", ""))): m for m in running}
    models = []
    for tag in tags:
        name = str(tag.get("name") or tag.get("model") or "")
        if not name:
            continue
        loaded = live.pop(model_key(name), None)
        models.append(_info(tag, loaded))
    models.extend(_info(m, m) for m in live.values())  # loaded but missing from tags
    return models


def _info(tag: dict[str, Any], loaded: dict[str, Any] | None) -> ModelInfo:
    return ModelInfo(
        name=str(tag.get("name") or tag.get("model")),
        size_bytes=int(tag.get("size") or 0),
        loaded=loaded is not None,
        vram_bytes=int((loaded or {}).get("size_vram") or 0),
        digest=str(tag.get("digest") or ""),
        modified_at=str(tag.get("modified_at") or ""),
        expires_at=str((loaded or {}).get("expires_at") or ""),
        context_length=int((loaded or {}).get("context_length") or 0),
        details=dict(tag.get("details") or {}),
        capabilities=tuple(tag.get("capabilities") or ()),
    )


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"unreachable: {exc.os_error.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"
