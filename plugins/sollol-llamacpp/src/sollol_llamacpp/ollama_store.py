"""Find the GGUF file of a model that Ollama has pulled, so llama.cpp can run it without a copy.

Ollama's store (``$OLLAMA_MODELS``, default ``~/.ollama/models``) holds
``manifests/<host>/<namespace>/<model>/<tag>`` (a Docker distribution v2 manifest, JSON) and
``blobs/sha256-<hex>``. The manifest's layer with media type
``application/vnd.ollama.image.model`` is the GGUF weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sollol_core.errors import SollolError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "MODEL_MEDIA_TYPE",
    "ModelNotFound",
    "OllamaStoreError",
    "ollama_model_dirs",
    "parse_model_name",
    "resolve_gguf",
]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
GGUF_MAGIC = b"GGUF"

#: Where Ollama keeps models on Linux, after ``$OLLAMA_MODELS`` and the user's own home: the
#: install script's ``ollama`` service user, some distribution packages, the Docker image.
SYSTEM_MODEL_DIRS = (
    Path("/usr/share/ollama/.ollama/models"),
    Path("/var/lib/ollama/.ollama/models"),
    Path("/root/.ollama/models"),
)

# Part rules of Ollama's names: first character a letter, digit or "_"; "." in host, model and
# tag, not namespace; ":" only in host.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_TAG = _MODEL
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class OllamaStoreError(SollolError):
    """Ollama's store has the model but something in it is unusable (the message names the file),
    or the name is not a valid Ollama model name."""


class ModelNotFound(OllamaStoreError):
    """No store has a manifest for the model; the message lists every place looked at."""

    def __init__(self, name: str, manifests: Sequence[Path], roots: Sequence[Path],
                 missing_roots: Iterable[Path] = ()) -> None:
        self.name = name
        self.manifests = tuple(manifests)
        self.roots = tuple(roots)
        absent = set(missing_roots)
        lines = [f"model {name!r} is not in any Ollama model store."]
        if self.manifests:
            lines.append("Manifests looked for:")
            lines += [f"  {p}" for p in self.manifests]
        lines.append("Stores searched (set OLLAMA_MODELS to add one):"
                     if self.roots else "No store to search (set OLLAMA_MODELS).")
        lines += [f"  {r}{' (does not exist)' if r in absent else ''}" for r in self.roots]
        lines.append(f"Pull it with `ollama pull {name}`, or give the path of a .gguf file.")
        super().__init__("\n".join(lines))


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _expand(path: str, environ: Mapping[str, str]) -> Path:
    if path == "~" or path.startswith("~/"):
        return _home(environ) / path[2:]
    return Path(path).expanduser()


def ollama_model_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Candidate store roots, most specific first: ``$OLLAMA_MODELS``, ``~/.ollama/models``, then
    the system locations. Duplicates dropped; whether each exists is not checked."""
    env = os.environ if environ is None else environ
    candidates: list[Path] = []
    if env.get("OLLAMA_MODELS"):
        candidates.append(_expand(env["OLLAMA_MODELS"], env))
    candidates.append(_home(env) / ".ollama" / "models")
    candidates.extend(SYSTEM_MODEL_DIRS)
    seen: set[str] = set()
    dirs = []
    for path in candidates:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            dirs.append(Path(key))
    return dirs


def parse_model_name(name: str) -> tuple[str, str, str, str]:
    """``[host/][namespace/]model[:tag]`` -> (host, namespace, model, tag), defaults filled.

    A ``:`` is the tag separator only after the last ``/`` (``myreg:5000/ns/m`` has host
    ``myreg:5000`` and tag ``latest``). Raises ValueError naming the bad part.
    """
    text = name.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
            break
    tag = DEFAULT_TAG
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
    parts = text.split("/")
    if len(parts) > 3:
        # Ollama keeps the rest in the host, which then fails the host rule; say it plainly.
        raise ValueError(f"invalid model name {name!r}: too many '/' (host/namespace/model:tag)")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    for label, value, rule in (("host", host, _HOST), ("namespace", namespace, _NAMESPACE),
                               ("model", model, _MODEL), ("tag", tag, _TAG)):
        if not rule.fullmatch(value):
            shown = repr(value) if value else "empty"
            raise ValueError(f"invalid model name {name!r}: the {label} is {shown}")
    return host, namespace, model, tag


def _child(directory: Path, part: str) -> Path | None:
    """``directory/part``, matching ``part`` case-insensitively; the stored spelling wins."""
    exact = directory / part
    if exact.exists():
        return exact
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return None
    folded = part.casefold()
    for entry in entries:
        if entry.casefold() == folded:
            return directory / entry
    return None


def _find_manifest(root: Path, parts: Sequence[str]) -> Path | None:
    current: Path | None = root / "manifests"
    for part in parts:
        if current is None or not current.is_dir():
            return None
        current = _child(current, part)
    if current is not None and current.is_file():
        return current
    return None


def _starts_with_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def _explicit_file(name: str) -> Path | None:
    candidate = Path(name).expanduser()
    try:
        if not candidate.is_file():
            return None
    except (OSError, ValueError):
        return None
    if _starts_with_gguf(candidate):
        return candidate
    if candidate.suffix.lower() == ".gguf":
        raise OllamaStoreError(f"{candidate} is not a GGUF file (it does not start with 'GGUF')")
    return None


def _model_layer(manifest: Path) -> dict[str, Any]:
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OllamaStoreError(f"cannot read the Ollama manifest {manifest}: {exc}") from exc
    layers = document.get("layers") if isinstance(document, dict) else None
    if not isinstance(layers, list):
        raise OllamaStoreError(f"the Ollama manifest {manifest} has no 'layers' list")
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_MEDIA_TYPE:
            return layer
    kinds = ", ".join(str(layer.get("mediaType")) for layer in layers if isinstance(layer, dict))
    raise OllamaStoreError(
        f"the Ollama manifest {manifest} has no GGUF model layer ({MODEL_MEDIA_TYPE}); its "
        f"layers are: {kinds or 'none'} (a safetensors or cloud model cannot run on llama.cpp)")


def _blob(root: Path, manifest: Path, layer: Mapping[str, Any]) -> Path:
    digest = layer.get("digest")
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise OllamaStoreError(
            f"the model layer in {manifest} has an invalid digest {digest!r} "
            "(expected sha256:<64 hex>)")
    blob = root / "blobs" / f"sha256-{match.group(1).lower()}"
    if not blob.is_file():
        raise OllamaStoreError(
            f"the GGUF blob {blob} named by {manifest} is missing (an interrupted pull? "
            "run `ollama pull` again)")
    if not _starts_with_gguf(blob):
        raise OllamaStoreError(f"the blob {blob} named by {manifest} is not a GGUF file")
    size = layer.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        actual = blob.stat().st_size
        if actual != size:
            raise OllamaStoreError(
                f"the GGUF blob {blob} has {actual} bytes but {manifest} says {size}")
    return blob


def resolve_gguf(name: str, *, dirs: Sequence[Path] | None = None,
                 environ: Mapping[str, str] | None = None) -> Path:
    """The GGUF file of ``name``: an Ollama model name, or the path of a GGUF file.

    Stores are searched in order (``dirs``, default :func:`ollama_model_dirs`); the first that
    has the manifest decides. Raises :class:`ModelNotFound` when none has it, and
    :class:`OllamaStoreError` when the name is invalid or the store's files are unusable.
    """
    explicit = _explicit_file(name)
    if explicit is not None:
        return explicit
    try:
        parts = parse_model_name(name)
    except ValueError as exc:
        raise OllamaStoreError(str(exc)) from None
    roots = [Path(d) for d in (ollama_model_dirs(environ) if dirs is None else dirs)]
    looked: list[Path] = []
    missing: list[Path] = []
    for root in roots:
        looked.append(root.joinpath("manifests", *parts))
        if not root.is_dir():
            missing.append(root)
            continue
        manifest = _find_manifest(root, parts)
        if manifest is not None:
            return _blob(root, manifest, _model_layer(manifest))
    raise ModelNotFound(name, looked, roots, missing)
