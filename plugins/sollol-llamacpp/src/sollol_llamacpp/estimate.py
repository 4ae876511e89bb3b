"""How much memory a GGUF model needs under llama.cpp: weights, KV cache, compute buffer.

    read_footprint(Path("m.gguf")).total_bytes(4096, 2)   # ``llama-server -c 4096 -np 2``

Rules from llama.cpp build 11434 (``src/llama-context.cpp``, ``src/llama-kv-cache*.cpp``), checked
against its load log (``model buffer size``, ``llama_kv_cache: size``, ``compute buffer size``):

* ``-c`` is the total context shared by the ``-np`` slots: llama.cpp pads it to 256 cells and
  gives each slot a stream of ``pad(c / np, 256)`` cells (one stream of ``c`` cells with
  ``--kv-unified``, as llama-server does with 4 slots when ``-np`` is not given).
* Sliding-window layers (``llama_kv_cache_iswa``; gemma2/3, cohere2, gpt-oss... when the GGUF has
  ``<arch>.attention.sliding_window``) hold per stream ``pad(min(cells per slot, n_swa +
  n_ubatch), 256)`` cells (``n_swa * np + n_ubatch`` when unified). Which layers slide: the GGUF's
  ``sliding_window_pattern``, else llama.cpp's default (gemma3: all but every 6th layer).
* Compute buffer with flash attention (llama.cpp's ``auto`` picks it on CPU, CUDA, Metal), for
  ``T = min(c, n_ubatch)`` tokens: ``4T * 5 n_embd + max(4T * 3 n_ff, 4 n_vocab * np)`` live
  floats (the FFN phase, or the logits of one output per slot) plus one f16 attention mask of
  ``T * cells per slot`` per cache (full, SWA). Without flash attention the masks are f32 and the
  attention phase may dominate: ``4T * n_head * cells`` (KQ) ``+ 26T * max(n_embd, n_q)``.
  Fitted on Gemma 3 270M and three synthetic llama shapes, ubatch 64..1024: within 3 % (flash).
* The host output buffer holds ``4 * n_vocab`` bytes of logits per slot.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from itertools import accumulate
from pathlib import Path
from typing import Any

import attrs

from sollol_llamacpp.gguf_header import read_header

__all__ = ["CACHE_TYPES", "MODEL_PROFILES", "SWA_PATTERNS", "ModelFootprint",
           "UnknownModelProfile", "estimate_from_profile", "footprint_from_model_info",
           "footprint_from_profile", "read_footprint"]

# KV cache types (-ctk/-ctv): (bytes per block, elements per block), as ggml_row_size counts them
CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (4, 1), "f16": (2, 1), "bf16": (2, 1), "q8_0": (34, 32), "q5_1": (24, 32),
    "q5_0": (22, 32), "q4_1": (20, 32), "q4_0": (18, 32), "iq4_nl": (18, 32)}
# llama.cpp's default SWA layer pattern per architecture (src/models/*.cpp load_swa_pattern):
# (n_pattern, dense_first); used when the GGUF has a sliding window but no explicit pattern
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma-embedding": (6, False),
    "cohere2": (4, False), "gpt-oss": (2, False), "exaone4": (4, False), "olmo2": (4, False)}


def _pad(n: int, to: int = 256) -> int:  # llama.cpp pads n_ctx, slots, SWA cache to 256 cells
    return -(-n // to) * to


def _row_bytes(cache_type: str, elements: int) -> int:
    if cache_type not in CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {cache_type!r}; known: {', '.join(CACHE_TYPES)}")
    block_bytes, block = CACHE_TYPES[cache_type]
    return -(-elements // block) * block_bytes


@attrs.frozen
class ModelFootprint:
    """A model's sizes as llama.cpp will allocate them; every count is in bytes or elements."""

    architecture: str
    layer_count: int
    layer_bytes: tuple[int, ...]  # weights of blk.N.* per layer N
    non_layer_bytes: int  # token embedding, output, norms: everything not blk.*
    parameter_count: int
    context_length: int  # trained
    head_count_kv: int
    key_length: int  # per head
    value_length: int
    file_bytes: int
    embedding_length: int = 0
    feed_forward_length: int = 0
    head_count: int = 0
    vocab_size: int = 0
    sliding_window: int = 0  # 0: no SWA
    swa_layers: tuple[bool, ...] = ()  # per layer, empty when no SWA

    def __attrs_post_init__(self) -> None:
        if len(self.layer_bytes) != self.layer_count or len(self.swa_layers) not in (
                0, self.layer_count):
            raise ValueError(f"layer_bytes and swa_layers must have {self.layer_count} entries")

    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.non_layer_bytes

    def kv_cells(self, context: int, parallel: int = 1, *, batch: int = 512,
                 unified: bool = False) -> tuple[int, int, int]:
        """(streams, full-attention cells per stream, SWA cells per stream) for ``-c context
        -np parallel -ub batch``; context <= 0 means the trained context, as ``-c 0`` does."""
        n_ctx = _pad(context if context > 0 else self.context_length)
        streams, per_stream = (1, n_ctx) if unified else (parallel, _pad(n_ctx // parallel))
        window = self.sliding_window * (parallel if unified else 1) + batch
        return streams, per_stream, _pad(min(per_stream, window)) if any(self.swa_layers) else 0

    def layer_kv_bytes(self, context: int, parallel: int = 1, cache_type: str = "f16", *,
                       batch: int = 512, unified: bool = False) -> tuple[int, ...]:
        streams, full, swa = self.kv_cells(context, parallel, batch=batch, unified=unified)
        row = (_row_bytes(cache_type, self.key_length * self.head_count_kv)
               + _row_bytes(cache_type, self.value_length * self.head_count_kv))
        flags = self.swa_layers or (False,) * self.layer_count
        return tuple(row * (swa if is_swa else full) * streams for is_swa in flags)

    def kv_cache_bytes(self, context: int, parallel: int = 1, cache_type: str = "f16", *,
                       batch: int = 512, unified: bool = False) -> int:
        """K and V of every layer, (key_length + value_length) * head_count_kv elements per cell,
        for the cells of :meth:`kv_cells` (``-c`` is shared by all slots; SWA: the window)."""
        return sum(self.layer_kv_bytes(context, parallel, cache_type, batch=batch,
                                       unified=unified))

    def compute_buffer_bytes(self, context: int, batch: int = 512, parallel: int = 1, *,
                             unified: bool = False, flash_attn: bool = True) -> int:
        """The compute buffer of one device holding the whole model (rule: module docstring);
        ``batch`` is the physical batch ``-ub``."""
        streams, full, swa = self.kv_cells(context, parallel, batch=batch, unified=unified)
        tokens, cells = min(full * streams, batch), full + swa
        peak = 20 * tokens * self.embedding_length + max(
            12 * tokens * self.feed_forward_length, 4 * self.vocab_size * min(tokens, parallel))
        if flash_attn:
            return peak + 2 * tokens * cells
        q_width = max(self.embedding_length, self.head_count * self.key_length)
        attention = 4 * tokens * self.head_count * full + 26 * tokens * q_width
        return max(peak, attention) + 4 * tokens * cells

    def output_buffer_bytes(self, parallel: int = 1) -> int:
        return 4 * self.vocab_size * parallel

    def total_bytes(self, context: int, parallel: int = 1, cache_type: str = "f16", *,
                    batch: int = 512, unified: bool = False, flash_attn: bool = True) -> int:
        """Weights + KV cache + compute buffer + output buffer on one device."""
        return (self.weights_bytes()
                + self.kv_cache_bytes(context, parallel, cache_type, batch=batch, unified=unified)
                + self.compute_buffer_bytes(context, batch, parallel, unified=unified,
                                            flash_attn=flash_attn)
                + self.output_buffer_bytes(parallel))

    def per_layer_total(self, context: int, parallel: int = 1, cache_type: str = "f16", *,
                        batch: int = 512, unified: bool = False) -> tuple[int, ...]:
        """Per layer: its weights plus its own KV cache (what a layer split takes along)."""
        kv = self.layer_kv_bytes(context, parallel, cache_type, batch=batch, unified=unified)
        return tuple(w + k for w, k in zip(self.layer_bytes, kv, strict=True))

    def layers_for(self, bytes_available: int, context: int | None = None, parallel: int = 1,
                   cache_type: str = "f16") -> int:
        """How many layers, from the first, fit in ``bytes_available``: weights only when
        ``context`` is None, else weights plus their KV cache at that context."""
        sizes = (self.layer_bytes if context is None
                 else self.per_layer_total(context, parallel, cache_type))
        return sum(1 for used in accumulate(sizes) if used <= bytes_available)


def _swa_layers(arch: str, layers: int, window: int, pattern: Any) -> tuple[bool, ...]:
    if window <= 0:
        return ()
    if isinstance(pattern, list | tuple):
        return tuple(bool(p) for p in pattern[:layers]) + (False,) * (layers - len(pattern))
    n, dense_first = SWA_PATTERNS.get(arch, (0, False))
    n = n if pattern is None else int(pattern)
    return tuple(n == 0 or (il % n != 0 if dense_first else il % n < n - 1)
                 for il in range(layers))


def _hyper(arch: str, get: Callable[[str], Any]) -> dict[str, Any]:
    """The shape keys shared by GGUF metadata and Ollama's model_info, as footprint fields."""
    def num(key: str, default: int = 0) -> int:
        value = get(f"{arch}.{key}")
        if isinstance(value, list | tuple):  # per-layer arrays: the largest is the bound
            value = max((int(v) for v in value), default=default)
        return default if value is None else int(value)

    layers, embd = num("block_count"), num("embedding_length")
    heads = num("attention.head_count", 1)
    pattern = get(f"{arch}.attention.sliding_window_pattern")
    window = num("attention.sliding_window") if arch in SWA_PATTERNS or pattern else 0
    return {
        "architecture": arch, "layer_count": layers, "context_length": num("context_length"),
        "head_count_kv": num("attention.head_count_kv", heads),
        "key_length": num("attention.key_length", embd // max(heads, 1)),
        "value_length": num("attention.value_length", embd // max(heads, 1)),
        "embedding_length": embd, "feed_forward_length": num("feed_forward_length"),
        "head_count": heads, "vocab_size": num("vocab_size"), "sliding_window": window,
        "swa_layers": _swa_layers(arch, layers, window, pattern)}


def read_footprint(path: Path) -> ModelFootprint:
    """A GGUF's footprint from its metadata and tensor table (no tensor data is read). Cached by
    path, size and mtime."""
    stat = Path(path).stat()
    return _read_footprint(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read_footprint(path: str, file_bytes: int, _mtime_ns: int) -> ModelFootprint:
    header = read_header(Path(path))
    get = header.metadata.get
    arch = str(get("general.architecture"))
    hyper = _hyper(arch, get)
    layers: list[int] = [0] * hyper["layer_count"]
    rest = elements = 0
    for tensor in header.tensors:
        elements += tensor.n_elements
        match = re.match(r"blk\.(\d+)\.", tensor.name)
        if match and int(match[1]) < len(layers):
            layers[int(match[1])] += tensor.n_bytes
        else:
            rest += tensor.n_bytes
        if tensor.name == "token_embd.weight" and not hyper["vocab_size"]:
            hyper["vocab_size"] = tensor.shape[1]
    return ModelFootprint(layer_bytes=tuple(layers), non_layer_bytes=rest, file_bytes=file_bytes,
                          parameter_count=int(get("general.parameter_count") or elements), **hyper)


def _spread(hyper: dict[str, Any], size_bytes: int, params: int, copies: int) -> ModelFootprint:
    """The embedding takes its parameter share of the file; the layers share the rest evenly."""
    vocab, embd, layers = hyper["vocab_size"], hyper["embedding_length"], hyper["layer_count"]
    share = vocab * embd * copies / params if params and vocab else 0.0
    non_layer = min(size_bytes, round(size_bytes * share))
    each = (size_bytes - non_layer) // max(layers, 1)
    return ModelFootprint(
        layer_bytes=(each,) * layers, non_layer_bytes=size_bytes - each * layers,
        parameter_count=params, file_bytes=size_bytes, **hyper)


def footprint_from_model_info(model_info: Mapping[str, Any], size_bytes: int) -> ModelFootprint:
    """A footprint from Ollama's ``/api/show`` ``model_info`` and the model's size in bytes."""
    arch = str(model_info["general.architecture"])
    hyper = _hyper(arch, model_info.get)
    tokens = model_info.get("tokenizer.ggml.tokens")
    if not hyper["vocab_size"] and isinstance(tokens, list):
        hyper["vocab_size"] = len(tokens)
    params = int(model_info.get("general.parameter_count") or 0)
    return _spread(hyper, size_bytes, params, 1)


# Ollama library defaults: arch, parameters, bytes per parameter (file size / parameters: Q4_K_M
# ~0.61, Q8_0 ~1.06), layers, n_embd, n_ff, heads, KV heads, head dim, vocab, trained context,
# sliding window, embedding copies (1 tied, 2 untied). From the library pages and HF configs.
_Row = tuple[str, float, float, int, int, int, int, int, int, int, int, int, int]
_PROFILE_ROWS: dict[str, _Row] = {
    "llama3.2:1b": ("llama", 1.24e9, 1.05, 16, 2048, 8192, 32, 8, 64, 128256, 131072, 0, 1),
    "llama3.2:3b": ("llama", 3.21e9, 0.62, 28, 3072, 8192, 24, 8, 128, 128256, 131072, 0, 1),
    "llama3.1:8b": ("llama", 8.03e9, 0.61, 32, 4096, 14336, 32, 8, 128, 128256, 131072, 0, 2),
    "llama3.1:70b": ("llama", 70.6e9, 0.61, 80, 8192, 28672, 64, 8, 128, 128256, 131072, 0, 2),
    "qwen2.5:7b": ("qwen2", 7.62e9, 0.62, 28, 3584, 18944, 28, 4, 128, 152064, 32768, 0, 2),
    "qwen2.5:14b": ("qwen2", 14.8e9, 0.61, 48, 5120, 13824, 40, 8, 128, 152064, 32768, 0, 2),
    "mistral:7b": ("llama", 7.25e9, 0.61, 32, 4096, 14336, 32, 8, 128, 32768, 32768, 0, 2),
    "gemma3:270m": ("gemma3", 2.68e8, 1.09, 18, 640, 2048, 4, 1, 256, 262144, 32768, 512, 1),
    "gemma3:1b": ("gemma3", 1.0e9, 0.82, 26, 1152, 6912, 4, 1, 256, 262144, 32768, 512, 1),
    "gemma3:4b": ("gemma3", 4.3e9, 0.77, 34, 2560, 10240, 8, 4, 256, 262208, 131072, 1024, 1),
    "gemma3:12b": ("gemma3", 12.2e9, 0.66, 48, 3840, 15360, 16, 8, 256, 262208, 131072, 1024, 1),
}
_TAGS = {"llama3.2": "3b", "llama3.1": "8b", "qwen2.5": "7b", "mistral": "7b", "gemma3": "4b"}


def _profile(row: _Row) -> ModelFootprint:
    arch, params, bpp, layers, embd, ff, heads, kv, head_dim, vocab, ctx, window, copies = row
    hyper: dict[str, Any] = {
        "architecture": arch, "layer_count": layers, "context_length": ctx, "head_count_kv": kv,
        "key_length": head_dim, "value_length": head_dim, "embedding_length": embd,
        "feed_forward_length": ff, "head_count": heads, "vocab_size": vocab,
        "sliding_window": window, "swa_layers": _swa_layers(arch, layers, window, None)}
    return _spread(hyper, round(params * bpp), round(params), copies)


MODEL_PROFILES: dict[str, ModelFootprint] = {n: _profile(r) for n, r in _PROFILE_ROWS.items()}


class UnknownModelProfile(KeyError):
    """No profile for a model name; the message names the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def footprint_from_profile(name: str) -> ModelFootprint:
    """The approximate footprint of an Ollama model by name (``llama3.1``, ``gemma3:4b``)."""
    key = name.strip().lower().removeprefix("registry.ollama.ai/library/").removesuffix(":latest")
    if ":" not in key and key in _TAGS:
        key = f"{key}:{_TAGS[key]}"
    if key not in MODEL_PROFILES:
        raise UnknownModelProfile(
            f"no memory profile for model {name!r}; known: {', '.join(sorted(MODEL_PROFILES))}")
    return MODEL_PROFILES[key]


def estimate_from_profile(name: str, context: int, parallel: int = 1,
                          cache_type: str = "f16") -> int:
    """Bytes ``llama-server -c context -np parallel`` needs for a profiled model."""
    return footprint_from_profile(name).total_bytes(context, parallel, cache_type)
