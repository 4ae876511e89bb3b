"""The memory estimator against the real Gemma 3 270M GGUF and the real llama-server's load log."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader
from hypothesis import given, settings
from hypothesis import strategies as st
from sollol_llamacpp.binaries import Binaries
from sollol_llamacpp.estimate import (
    MODEL_PROFILES,
    ModelFootprint,
    UnknownModelProfile,
    estimate_from_profile,
    footprint_from_model_info,
    footprint_from_profile,
    read_footprint,
)
from sollol_llamacpp.gguf_header import SkippedArray, read_header
from sollol_llamacpp.processes import ephemeral_port

MIB = 1 << 20


@pytest.fixture(scope="session")
def footprint(gemma: Path) -> ModelFootprint:
    return read_footprint(gemma)


@pytest.fixture(scope="session")
def reader(gemma: Path) -> GGUFReader:
    """The gguf package's own reading of the file, to check against (slow: ~8 s)."""
    return GGUFReader(gemma, "r")


def test_reads_the_real_gguf(gemma: Path, footprint: ModelFootprint, reader: GGUFReader) -> None:
    assert footprint.architecture == "gemma3"
    assert footprint.layer_count == 18 and len(footprint.layer_bytes) == 18
    assert all(size > 0 for size in footprint.layer_bytes)
    assert 2.5e8 <= footprint.parameter_count <= 3.2e8
    # every byte is accounted for: tensor data plus the header and metadata before it
    assert footprint.file_bytes == gemma.stat().st_size
    assert footprint.weights_bytes() + reader.data_offset == footprint.file_bytes
    # the metadata (a 262144-token vocabulary) is 2.6 % of this small file
    assert footprint.weights_bytes() == pytest.approx(footprint.file_bytes, rel=0.03)
    assert (footprint.context_length, footprint.head_count_kv) == (32768, 1)
    assert (footprint.key_length, footprint.value_length) == (256, 256)
    assert footprint.vocab_size == 262144
    # gemma3: a 512-token window on all layers but every 6th (llama.cpp's default pattern)
    assert footprint.sliding_window == 512
    assert [il for il, swa in enumerate(footprint.swa_layers) if not swa] == [5, 11, 17]


def test_the_fast_header_reader_agrees_with_the_gguf_package(gemma: Path,
                                                             reader: GGUFReader) -> None:
    header = read_header(gemma)
    assert {t.name: (t.n_bytes, t.shape) for t in header.tensors} == {
        t.name: (int(t.n_bytes), tuple(int(d) for d in t.shape)) for t in reader.tensors}
    for key, field in reader.fields.items():
        value = field.contents()
        if key.startswith("GGUF."):
            continue
        if isinstance(value, list) and (len(value) > 4096 or isinstance(value[0], str)):
            assert header.metadata[key] == SkippedArray(len(value)), key  # the vocabulary...
        else:
            assert header.metadata[key] == pytest.approx(value), key
    first = read_header(gemma, stop_after={"general.architecture"})
    assert first.metadata["general.architecture"] == "gemma3" and first.tensors == ()


_LINES = {
    "model": re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB"),
    "kv": re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB"),
    "compute": re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB"),
    "output": re.compile(r"(\S+)\s+output buffer size =\s*([\d.]+) MiB"),
    "file": re.compile(r"print_info: file size\s*=\s*([\d.]+) MiB"),
}


def _reported(log: str) -> dict[str, float]:
    """Bytes per kind from llama.cpp's load log (sums over backends and caches)."""
    found = {kind: [m.groups() for m in pattern.finditer(log)] for kind, pattern in _LINES.items()}
    assert all(found.values()), f"load lines missing: {[k for k, v in found.items() if not v]}"
    return {
        "weights": sum(float(g[-1]) for g in found["model"] if g[0] != "CPU_REPACK") * MIB,
        "weights_all": sum(float(g[-1]) for g in found["model"]) * MIB,
        "kv": sum(float(g[-1]) for g in found["kv"]) * MIB,
        "compute": sum(float(g[-1]) for g in found["compute"]) * MIB,
        "output": sum(float(g[-1]) for g in found["output"]) * MIB,
        "file": float(found["file"][0][0]) * MIB,
    }


def _run_llama_server(binaries: Binaries, gguf: Path, log_path: Path, *args: str) -> str:
    """Starts the real llama-server, waits for /health 200, stops it; returns its log."""
    port = ephemeral_port()
    argv = [str(binaries.llama_server), "-m", str(gguf), *args, "-lv", "4",
            "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"llama-server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "llama-server not healthy within 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    return log_path.read_text()


@pytest.mark.parametrize(("context", "parallel"), [(1024, 1), (4096, 1), (4096, 4)])
def test_matches_what_llama_server_allocates(binaries: Binaries, gemma: Path, tmp_path: Path,
                                             footprint: ModelFootprint, context: int,
                                             parallel: int) -> None:
    log = _run_llama_server(binaries, gemma, tmp_path / "server.log",
                            "-c", str(context), "-np", str(parallel))
    seen = _reported(log)
    estimated = {
        "weights": footprint.weights_bytes(),
        "kv": footprint.kv_cache_bytes(context, parallel),
        "compute": footprint.compute_buffer_bytes(context, parallel=parallel),
        "output": footprint.output_buffer_bytes(parallel),
    }
    table = " ".join(f"{k}={estimated[k] / MIB:.2f}/{seen[k] / MIB:.2f}MiB" for k in estimated)
    # the tensor bytes are the mapped model buffer and llama.cpp's "file size"
    assert estimated["weights"] == pytest.approx(seen["weights"], abs=0.01 * MIB), table
    assert estimated["weights"] == pytest.approx(seen["file"], abs=0.01 * MIB), table
    # CPU_REPACK copies some tensors into a faster layout: still within 10 % of all of it
    assert estimated["weights"] == pytest.approx(seen["weights_all"], rel=0.10), table
    # the KV rule (shared -c, per-slot streams, SWA windows) is exact
    assert estimated["kv"] == pytest.approx(seen["kv"], abs=0.01 * MIB), table
    assert estimated["compute"] == pytest.approx(seen["compute"], rel=0.10), table
    assert estimated["output"] == pytest.approx(seen["output"], abs=0.01 * MIB), table
    total_seen = seen["weights_all"] + seen["kv"] + seen["compute"] + seen["output"]
    assert footprint.total_bytes(context, parallel) == pytest.approx(total_seen, rel=0.10), table


def test_context_is_shared_by_the_slots(footprint: ModelFootprint) -> None:
    llama = footprint_from_profile("llama3.1:8b")  # no SWA: the cache is -c cells whatever -np
    per_cell = 2 * 32 * 8 * 128 * 2
    assert llama.kv_cache_bytes(8192, 1) == llama.kv_cache_bytes(8192, 4) == 8192 * per_cell
    # gemma3's SWA layers hold at most n_swa + n_ubatch cells per slot: more slots, more cells
    assert footprint.kv_cache_bytes(4096, 4) == 72 * MIB
    assert footprint.kv_cache_bytes(4096, 1) == 27 * MIB
    assert footprint.kv_cache_bytes(4096, 1, "q8_0") == pytest.approx(27 * MIB * 34 / 64)
    assert footprint.kv_cache_bytes(4096, 1, unified=True) == 27 * MIB
    with pytest.raises(ValueError, match="unknown KV cache type"):
        footprint.kv_cache_bytes(1024, 1, "q3_k")


@settings(max_examples=60, deadline=None)
@given(context=st.integers(1, 200_000), parallel=st.integers(1, 8))
def test_kv_cache_grows_with_context_not_slots(context: int, parallel: int) -> None:
    for name in ("llama3.1:8b", "gemma3:4b"):
        fp = MODEL_PROFILES[name]
        one = fp.kv_cache_bytes(context, parallel)
        assert fp.kv_cache_bytes(context + 1, parallel) >= one
        if not any(fp.swa_layers):  # padding to 256 cells per slot is the only slot cost
            cell = fp.kv_cache_bytes(256, 1) // 256
            assert fp.kv_cache_bytes(context, 1) <= one <= (context + 256 * (parallel + 1)) * cell


def test_layers_for(footprint: ModelFootprint) -> None:
    five = sum(footprint.layer_bytes[:5])
    assert footprint.layers_for(five) == 5
    assert footprint.layers_for(five - 1) == 4
    assert footprint.layers_for(0) == 0
    assert footprint.layers_for(10**12, context=4096) == 18
    per_layer = footprint.per_layer_total(4096)
    assert sum(per_layer) == footprint.weights_bytes() - footprint.non_layer_bytes \
        + footprint.kv_cache_bytes(4096)
    assert footprint.layers_for(five, context=4096) < 5


def _llama32_3b_info() -> dict[str, Any]:
    """``model_info`` as Ollama's /api/show gives it for llama3.2:3b (Q4_K_M)."""
    return {
        "general.architecture": "llama", "general.parameter_count": 3212749888,
        "general.file_type": 15, "general.quantization_version": 2,
        "llama.block_count": 28, "llama.context_length": 131072,
        "llama.embedding_length": 3072, "llama.feed_forward_length": 8192,
        "llama.attention.head_count": 24, "llama.attention.head_count_kv": 8,
        "llama.attention.key_length": 128, "llama.attention.value_length": 128,
        "llama.attention.layer_norm_rms_epsilon": 1e-05, "llama.rope.dimension_count": 128,
        "llama.rope.freq_base": 500000, "llama.vocab_size": 128256,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": None,
    }


def test_footprint_from_ollama_model_info() -> None:
    fp = footprint_from_model_info(_llama32_3b_info(), 2_019_393_189)
    assert fp.layer_count == 28 and fp.weights_bytes() == 2_019_393_189
    assert fp.kv_cache_bytes(4096) == 28 * 4096 * 2 * 8 * 128 * 2  # 448 MiB
    total = fp.total_bytes(4096)
    assert 2.3e9 < total < 3.0e9
    assert estimate_from_profile("llama3.2", 4096) == pytest.approx(total, rel=0.10)
    assert estimate_from_profile("llama3.2:3b", 4096) == estimate_from_profile("llama3.2:latest",
                                                                               4096)


def test_model_info_of_the_real_gguf_agrees_with_reading_it(reader: GGUFReader,
                                                             footprint: ModelFootprint) -> None:
    """Ollama's model_info is the GGUF's own metadata (arrays left out)."""
    info = {key: field.contents() for key, field in reader.fields.items()
            if not key.startswith("tokenizer.") and not key.startswith("GGUF.")}
    info["general.parameter_count"] = footprint.parameter_count
    fp = footprint_from_model_info(info, footprint.file_bytes)
    assert fp.swa_layers == footprint.swa_layers
    assert fp.kv_cache_bytes(4096, 2) == footprint.kv_cache_bytes(4096, 2)
    assert fp.total_bytes(4096) == pytest.approx(footprint.total_bytes(4096), rel=0.05)


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(KeyError) as caught:
        estimate_from_profile("no-such-model:1b", 2048)
    assert isinstance(caught.value, UnknownModelProfile)
    assert "no-such-model:1b" in str(caught.value) and "llama3.1:8b" in str(caught.value)
