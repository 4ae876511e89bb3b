"""Models a coordinator on this machine can load: configured GGUF files and the local Ollama store.

Read from disk in the background (discovery), so that placement can see them without I/O: RPC
worker snapshots list them as the models the worker can take layers of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sollol_core.config import Settings
from sollol_core.types import ModelInfo, model_key
from sollol_llamacpp.ollama_store import ModelNotFound, ollama_model_dirs, resolve_gguf
from sollol_llamacpp.settings import LlamacppSettings

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


def _display(host: str, namespace: str, model: str, tag: str) -> str:
    if host == DEFAULT_HOST and namespace == DEFAULT_NAMESPACE:
        return f"{model}:{tag}"
    if host == DEFAULT_HOST:
        return f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def store_models(environ: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Every model in the local Ollama stores whose weights resolve to a GGUF file."""
    found: dict[str, Path] = {}
    for root in ollama_model_dirs(environ):
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for manifest in manifests.glob("*/*/*/*"):
            if not manifest.is_file():
                continue
            host, namespace, model, tag = manifest.relative_to(manifests).parts
            name = _display(host, namespace, model, tag)
            try:
                found.setdefault(name, resolve_gguf(name, dirs=[root]))
            except ModelNotFound:
                continue
    return found


def shardable(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Model name -> GGUF path: configured models first, then the Ollama store."""
    configured = settings.section(LlamacppSettings).models
    models = {name: Path(path).expanduser() for name, path in configured.items()}
    for name, path in store_models(environ if environ is not None else os.environ).items():
        if not any(model_key(name) == model_key(known) for known in models):
            models[name] = path
    return {name: path for name, path in models.items() if path.is_file()}


def as_model_infos(models: Mapping[str, Path], loaded: str | None) -> tuple[ModelInfo, ...]:
    return tuple(ModelInfo(name=name, size_bytes=path.stat().st_size,
                           loaded=loaded is not None and model_key(name) == model_key(loaded))
                 for name, path in models.items())
