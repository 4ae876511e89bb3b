"""Resolving Ollama model names to GGUF blobs in stores laid out exactly as Ollama lays them out."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from sollol_llamacpp.ollama_store import (
    ModelNotFound,
    OllamaStoreError,
    ollama_model_dirs,
    parse_model_name,
    resolve_gguf,
)

from sollol_core.errors import SollolError

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _put_blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}", len(data)


def add_model(root: Path, host: str, namespace: str, model: str, tag: str, *,
              gguf: bytes | None = b"GGUF\x03\x00\x00\x00" + bytes(56),
              model_digest: tuple[str, int] | None = None) -> Path:
    """Writes config, template and params blobs, the model blob and the manifest, the way an
    ``ollama pull`` leaves them; returns the manifest's path."""
    config = json.dumps({"model_format": "gguf", "model_family": "gemma3",
                         "model_families": ["gemma3"], "model_type": "268.10M",
                         "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux"}).encode()
    config_digest, config_size = _put_blob(root, config)
    layers = []
    if gguf is not None or model_digest is not None:
        digest, size = model_digest if model_digest is not None else _put_blob(root, gguf or b"")
        layers.append({"mediaType": "application/vnd.ollama.image.model", "digest": digest,
                       "size": size})
    for media, text in (("template", "{{ .Prompt }}"), ("params", '{"stop":["<end_of_turn>"]}'),
                        ("license", "Gemma Terms of Use")):
        digest, size = _put_blob(root, text.encode())
        layers.append({"mediaType": f"application/vnd.ollama.image.{media}", "digest": digest,
                       "size": size})
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": layers}
    path = root / "manifests" / host / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, separators=(",", ":")))
    return path


def blob_of(root: Path, data: bytes) -> Path:
    return root / "blobs" / f"sha256-{hashlib.sha256(data).hexdigest()}"


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "parts"), [
    ("gemma3", ("registry.ollama.ai", "library", "gemma3", "latest")),
    ("gemma3:270m", ("registry.ollama.ai", "library", "gemma3", "270m")),
    ("llama3.2:3b-instruct-q4_K_M",
     ("registry.ollama.ai", "library", "llama3.2", "3b-instruct-q4_K_M")),
    ("alice/tiny:q4", ("registry.ollama.ai", "alice", "tiny", "q4")),
    ("registry.ollama.ai/library/gemma3:270m",
     ("registry.ollama.ai", "library", "gemma3", "270m")),
    ("myreg:5000/ns/m", ("myreg:5000", "ns", "m", "latest")),
    ("myreg:5000/ns/m:v1", ("myreg:5000", "ns", "m", "v1")),
    ("https://myreg:5000/ns/m:v1", ("myreg:5000", "ns", "m", "v1")),
    ("http://localhost/ns/m", ("localhost", "ns", "m", "latest")),
])
def test_parse_model_name(name: str, parts: tuple[str, str, str, str]) -> None:
    assert parse_model_name(name) == parts


@pytest.mark.parametrize("name", [
    "", "m:", ":tag", "a/b/c/d", "../etc/passwd", "ns.dot/m", "-m", "m:-t", "a//m", "m/",
    "x" * 81, "m:t/x",
])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        parse_model_name(name)


# --- store roots -----------------------------------------------------------------------------


def test_model_dirs_order_and_dedupe() -> None:
    env = {"HOME": "/home/alice", "OLLAMA_MODELS": "/data/ollama/"}
    assert ollama_model_dirs(env) == [
        Path("/data/ollama"), Path("/home/alice/.ollama/models"),
        Path("/usr/share/ollama/.ollama/models"), Path("/var/lib/ollama/.ollama/models"),
        Path("/root/.ollama/models")]
    # root's home is one of the system places: listed once, in its first position
    assert ollama_model_dirs({"HOME": "/root", "OLLAMA_MODELS": "~/.ollama/models"}) == [
        Path("/root/.ollama/models"), Path("/usr/share/ollama/.ollama/models"),
        Path("/var/lib/ollama/.ollama/models")]
    assert ollama_model_dirs({"HOME": "/home/bob", "OLLAMA_MODELS": ""})[0] == Path(
        "/home/bob/.ollama/models")


def test_model_dirs_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    assert ollama_model_dirs()[0] == tmp_path


# --- resolving -------------------------------------------------------------------------------


def test_resolves_names_in_every_form(tmp_path: Path) -> None:
    root = tmp_path / "models"
    cases = {
        "gemma3:270m": ("registry.ollama.ai", "library", "gemma3", "270m"),
        "llama3.2": ("registry.ollama.ai", "library", "llama3.2", "latest"),
        "alice/tiny:q4": ("registry.ollama.ai", "alice", "tiny", "q4"),
        "myreg:5000/ns/m:v1": ("myreg:5000", "ns", "m", "v1"),
    }
    blobs = {}
    for name, parts in cases.items():
        data = b"GGUF" + name.encode()
        add_model(root, *parts, gguf=data)
        blobs[name] = blob_of(root, data)
    for name, blob in blobs.items():
        assert resolve_gguf(name, dirs=[root]) == blob
    assert resolve_gguf("registry.ollama.ai/library/gemma3:270m", dirs=[root]) == blobs[
        "gemma3:270m"]
    assert resolve_gguf("library/llama3.2:latest", dirs=[root]) == blobs["llama3.2"]


def test_lookup_is_case_insensitive_and_the_stored_spelling_wins(tmp_path: Path) -> None:
    root = tmp_path / "models"
    data = b"GGUF mixed case"
    add_model(root, "registry.ollama.ai", "Alice", "TinyLlama", "Q4_K_M", gguf=data)
    assert resolve_gguf("alice/tinyllama:q4_k_m", dirs=[root]) == blob_of(root, data)
    assert resolve_gguf("REGISTRY.OLLAMA.AI/ALICE/TINYLLAMA:Q4_K_M", dirs=[root]) == blob_of(
        root, data)


def test_ollama_models_takes_precedence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mine, theirs = tmp_path / "custom", home / ".ollama" / "models"
    add_model(theirs, "registry.ollama.ai", "library", "gemma3", "270m", gguf=b"GGUF home")
    add_model(mine, "registry.ollama.ai", "library", "gemma3", "270m", gguf=b"GGUF custom")
    env = {"HOME": str(home), "OLLAMA_MODELS": str(mine)}
    assert resolve_gguf("gemma3:270m", environ=env) == blob_of(mine, b"GGUF custom")
    # without OLLAMA_MODELS the user's own store answers
    assert resolve_gguf("gemma3:270m", environ={"HOME": str(home)}) == blob_of(
        theirs, b"GGUF home")
    # a model only the second store has is still found
    add_model(theirs, "registry.ollama.ai", "library", "qwen3", "0.6b", gguf=b"GGUF qwen")
    assert resolve_gguf("qwen3:0.6b", environ=env) == blob_of(theirs, b"GGUF qwen")


def test_not_found_names_the_model_and_every_place(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    add_model(first, "registry.ollama.ai", "library", "gemma3", "270m")
    absent = tmp_path / "absent"
    with pytest.raises(ModelNotFound) as caught:
        resolve_gguf("gemma3:1b", dirs=[first, second, absent])
    message = str(caught.value)
    assert "'gemma3:1b'" in message
    for root in (first, second, absent):
        assert str(root) in message
        assert str(root / "manifests/registry.ollama.ai/library/gemma3/1b") in message
    assert f"{absent} (does not exist)" in message
    assert "OLLAMA_MODELS" in message
    assert isinstance(caught.value, SollolError)
    assert caught.value.roots == (first, second, absent)


def test_not_found_with_default_dirs_lists_them(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "OLLAMA_MODELS": str(tmp_path / "nowhere")}
    with pytest.raises(ModelNotFound) as caught:
        resolve_gguf("alice/tiny:q4", environ=env)
    for root in ollama_model_dirs(env):
        assert str(root) in str(caught.value)


def test_manifest_without_model_layer(tmp_path: Path) -> None:
    root = tmp_path / "models"
    manifest = add_model(root, "registry.ollama.ai", "library", "remote", "latest", gguf=None)
    with pytest.raises(OllamaStoreError, match="no GGUF model layer") as caught:
        resolve_gguf("remote", dirs=[root])
    assert str(manifest) in str(caught.value)
    assert not isinstance(caught.value, ModelNotFound)


def test_missing_blob(tmp_path: Path) -> None:
    root = tmp_path / "models"
    digest = "sha256:" + "ab" * 32
    manifest = add_model(root, "registry.ollama.ai", "library", "gone", "latest",
                         model_digest=(digest, 10))
    with pytest.raises(OllamaStoreError, match="missing") as caught:
        resolve_gguf("gone", dirs=[root])
    assert str(root / "blobs" / ("sha256-" + "ab" * 32)) in str(caught.value)
    assert str(manifest) in str(caught.value)


def test_blob_that_is_not_gguf(tmp_path: Path) -> None:
    root = tmp_path / "models"
    add_model(root, "registry.ollama.ai", "library", "st", "latest", gguf=b"PK\x03\x04 zip")
    with pytest.raises(OllamaStoreError, match="not a GGUF file") as caught:
        resolve_gguf("st", dirs=[root])
    assert str(blob_of(root, b"PK\x03\x04 zip")) in str(caught.value)


def test_truncated_blob(tmp_path: Path) -> None:
    root = tmp_path / "models"
    data = b"GGUF" + bytes(100)
    add_model(root, "registry.ollama.ai", "library", "cut", "latest", gguf=data)
    blob_of(root, data).write_bytes(data[:50])
    with pytest.raises(OllamaStoreError, match="50 bytes"):
        resolve_gguf("cut", dirs=[root])


def test_unreadable_manifest(tmp_path: Path) -> None:
    root = tmp_path / "models"
    manifest = add_model(root, "registry.ollama.ai", "library", "bad", "latest")
    manifest.write_text("{not json")
    with pytest.raises(OllamaStoreError, match="cannot read") as caught:
        resolve_gguf("bad", dirs=[root])
    assert str(manifest) in str(caught.value)


def test_invalid_name_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(OllamaStoreError, match="invalid model name"):
        resolve_gguf("../../etc/passwd", dirs=[tmp_path])


def test_explicit_gguf_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = tmp_path / "tiny.gguf"
    named.write_bytes(b"GGUF" + bytes(8))
    assert resolve_gguf(str(named), dirs=[]) == named
    unnamed = tmp_path / "weights.bin"
    unnamed.write_bytes(b"GGUF" + bytes(8))
    assert resolve_gguf(str(unnamed), dirs=[]) == unnamed
    monkeypatch.chdir(tmp_path)
    assert resolve_gguf("tiny.gguf", dirs=[]) == Path("tiny.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not gguf")
    with pytest.raises(OllamaStoreError, match="not a GGUF file"):
        resolve_gguf(str(fake), dirs=[])
    # a missing .gguf path is not a file: it is treated as a model name (and refused as one)
    with pytest.raises(OllamaStoreError):
        resolve_gguf(str(tmp_path / "nope.gguf"), dirs=[])


# --- the real model --------------------------------------------------------------------------


def test_real_gemma_blob(tmp_path: Path, gemma: Path) -> None:
    root = tmp_path / "models"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / f"sha256-{GEMMA_SHA256}"
    try:
        os.link(gemma, blob)
    except OSError:
        blob.symlink_to(gemma)
    size = gemma.stat().st_size
    for parts in (("registry.ollama.ai", "library", "gemma3", "270m"),
                  ("registry.ollama.ai", "alice", "tiny", "q4"),
                  ("myreg:5000", "ns", "m", "v1")):
        add_model(root, *parts, model_digest=(f"sha256:{GEMMA_SHA256}", size))
    env = {"HOME": str(tmp_path / "home"), "OLLAMA_MODELS": str(root)}
    for name in ("gemma3:270m", "registry.ollama.ai/library/gemma3:270m", "Gemma3:270M",
                 "alice/tiny:q4", "myreg:5000/ns/m:v1"):
        resolved = resolve_gguf(name, environ=env)
        assert resolved == blob, name
        assert resolved.stat().st_size == size
    with resolve_gguf("gemma3:270m", environ=env).open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert resolve_gguf(str(gemma), environ=env) == gemma
