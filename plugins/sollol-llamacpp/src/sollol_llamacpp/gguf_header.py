"""A GGUF file's key-value header and tensor table, read without its tensor data.

``gguf.GGUFReader`` decodes every entry of every array into numpy objects: seconds for a
256k-token vocabulary. Placement only needs the shape keys and the tensors' sizes, so this
reader keeps scalars, strings and short numeric arrays, skips string arrays and long numeric ones
(keeping their length), and computes each tensor's bytes from its type's block size
(``gguf.GGML_QUANT_SIZES``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import attrs

# GGUF value types: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
_SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                            10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
#: Numeric arrays longer than this are skipped too (only their length is kept).
MAX_ARRAY_ITEMS = 4096


@attrs.frozen
class SkippedArray:
    """An array the reader did not keep (the vocabulary, token scores): its length only."""

    length: int


@attrs.frozen
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@attrs.frozen
class GGUFHeader:
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]


def read_header(path: Path, *, stop_after: Iterable[str] | None = None) -> GGUFHeader:
    """The metadata and tensor table of the GGUF at ``path``.

    With ``stop_after``, reading stops as soon as those keys are found (no tensors are read).
    """
    wanted = set(stop_after) if stop_after is not None else None
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, tensor_count, kv_count = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or later)")
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = _string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            metadata[key] = _value(f, kind)
            if wanted is not None and wanted <= metadata.keys():
                return GGUFHeader(metadata, ())
        if wanted is not None:
            return GGUFHeader(metadata, ())
        return GGUFHeader(metadata, tuple(_tensor(f) for _ in range(tensor_count)))


def _string(f: IO[bytes]) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode(errors="replace")


def _value(f: IO[bytes], kind: int) -> Any:
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item == _STRING:
            for _ in range(count):
                (length,) = struct.unpack("<Q", f.read(8))
                f.seek(length, 1)
            return SkippedArray(count)
        code = _SCALARS.get(item)
        if code is None:
            raise ValueError(f"unsupported GGUF array item type {item}")
        size = struct.calcsize(code)
        if count > MAX_ARRAY_ITEMS:
            f.seek(size * count, 1)
            return SkippedArray(count)
        return list(struct.unpack(f"<{count}{code}", f.read(size * count)))
    code = _SCALARS.get(kind)
    if code is None:
        raise ValueError(f"unsupported GGUF value type {kind}")
    (value,) = struct.unpack(f"<{code}", f.read(struct.calcsize(code)))
    return value


def _tensor(f: IO[bytes]) -> TensorInfo:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    name = _string(f)
    (dims,) = struct.unpack("<I", f.read(4))
    shape = struct.unpack(f"<{dims}Q", f.read(8 * dims))
    ggml_type, _offset = struct.unpack("<IQ", f.read(12))
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    elements = 1
    for dim in shape:
        elements *= dim
    return TensorInfo(name, tuple(shape), ggml_type, elements // block * type_size)
