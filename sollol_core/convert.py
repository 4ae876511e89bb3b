"""The one cattrs converter, used at every boundary: config, HTTP bodies, stored state.

Strict on the way in: unknown keys are rejected (naming the key) and a value of the wrong type is
an error, not a silent coercion (``"8000"`` is not an int, ``1`` is not a bool).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=True)

_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}


def _strict(kind: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {_NAMES[kind]}, got {value!r}")
        return value

    return structure


for _kind in (bool, int, float, str):
    converter.register_structure_hook(_kind, _strict(_kind))


def _is_sequence_type(kind: Any) -> bool:
    return typing.get_origin(kind) in (tuple, list)


#: Item types whose check needs no structuring: the Python types a JSON value of that kind has
#: (``int`` excludes ``bool``: ``type(True) is bool``).
_PLAIN_ITEMS: dict[Any, frozenset[type]] = {
    int: frozenset({int}), str: frozenset({str}), bool: frozenset({bool}),
    float: frozenset({int, float}), dict[str, Any]: frozenset({dict}), Any: frozenset(),
}


def _strict_sequence(kind: Any) -> Any:
    """Lists and ``tuple[X, ...]`` from a JSON/TOML array only: a string is not a list of names.

    Arrays of plain items (numbers, strings, objects, anything) are checked with ``map(type)``
    in C: a client's 10-million-item array costs milliseconds, not the seconds a per-item
    structuring loop takes, so a request body never stalls the event loop."""
    item = (typing.get_args(kind) or (Any,))[0]
    build = typing.get_origin(kind)
    plain = _PLAIN_ITEMS.get(item)
    if plain is not None:
        allowed = plain

        def check_plain(value: Any, _: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise TypeError(f"expected a list, got {value!r}")
            if allowed:
                wrong = set(map(type, value)) - allowed
                if wrong:
                    index = list(map(type, value)).index(next(iter(wrong)))
                    raise TypeError(f"item {index}: expected {_NAMES.get(item, 'an object')}, "
                                    f"got {value[index]!r}"[:300])
            if item is float:
                return build(map(float, value))
            return value if type(value) is build else build(value)

        return check_plain

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        items = []
        for index, element in enumerate(value):
            try:
                items.append(converter.structure(element, item))
            except Exception as exc:
                raise TypeError(f"item {index}: {exc}") from None
        return build(items)

    return structure


converter.register_structure_hook_factory(_is_sequence_type, _strict_sequence)


def _by_type(kind: Any) -> bool:
    """``Mapping[type, Any]``: plugin sections and facts, keyed by their classes; never data."""
    return bool(kind == typing.Mapping[type, Any] or kind == Mapping[type, Any])


def _refuse_by_type(value: Any, _: Any) -> Any:
    raise ValueError("not a setting (a plugin's section is a table of its own name)")


def _by_type_fields(cls: Any) -> list[str]:
    if not attrs.has(cls):
        return []
    return [f.name for f in attrs.fields(attrs.resolve_types(cls)) if _by_type(f.type)]


converter.register_structure_hook_func(_by_type, _refuse_by_type)
# Classes holding such a mapping are shown without it (a fleet snapshot's facts).
converter.register_unstructure_hook_factory(
    lambda cls: bool(_by_type_fields(cls)),
    lambda cls: make_dict_unstructure_fn(
        cls, converter, **{name: override(omit=True)  # type: ignore[arg-type]
                           for name in _by_type_fields(cls)}))


def structure(data: Any, cls: type[T]) -> T:
    return converter.structure(data, cls)


_lenient: dict[type, Any] = {}


def structure_lenient(data: Any, cls: type[T]) -> T:
    """Like :func:`structure`, but keys ``cls`` does not know are ignored, not rejected.

    For bodies of APIs that promise to ignore unknown fields (Ollama's, OpenAI's): the known
    fields are still checked strictly.
    """
    hook = _lenient.get(cls)
    if hook is None:
        hook = _lenient[cls] = make_dict_structure_fn(
            cls, converter, _cattrs_forbid_extra_keys=False)
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {data!r}")
    return hook(data, cls)  # type: ignore[no-any-return]


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def error_lines(exc: BaseException, path: str = "") -> list[tuple[str, str]]:
    """Flatten a cattrs structuring error into ``(dotted.key, message)`` pairs a user can act on."""
    found: list[tuple[str, str]] = []
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            found.append((_join(path, key), "unknown key"))
        return found
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = _join(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = f"{path}[{note.index}]"
            found.extend(error_lines(sub, sub_path))
        return found
    named = getattr(exc, "key", None)  # validators name the attribute they reject
    if isinstance(named, str):
        return [(_join(path, named), str(exc))]
    if isinstance(exc, KeyError):
        return [(_join(path, str(exc.args[0])), "is required")]
    return [(path or "value", str(exc))]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
