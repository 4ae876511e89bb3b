"""No plugin module keeps mutable state at module level: a router's state lives on its own plugin
objects, so two routers in one process never share coordinators, sessions or what they learnt."""

from __future__ import annotations

import contextvars
import datetime
import enum
import functools
import importlib
import importlib.metadata
import inspect
import logging
import operator
import pathlib
import pkgutil
import re
import struct
import types
import typing
from collections.abc import Iterator
from typing import Any

import attrs
import click
import pluggy
import pytest
from aiohttp import web

from sollol_core.http import Sessions

#: Values that cannot change, or that are declarations (a command, an app key, a logger).
IMMUTABLE = (str, bytes, int, float, complex, bool, type(None), frozenset, range, re.Pattern,
             enum.Enum, logging.Logger, typing.TypeVar, types.MappingProxyType, click.Command,
             web.AppKey, pluggy.HookimplMarker, pluggy.HookspecMarker, datetime.tzinfo,
             operator.attrgetter, operator.itemgetter, functools.partial, type(Ellipsis),
             datetime.datetime, datetime.timedelta, struct.Struct, pathlib.PurePath,
             contextvars.ContextVar)
#: Read-only tables that the seed guide documents as extendable by users (``MODEL_PROFILES``):
#: configuration the user writes, not state a router keeps.
USER_TABLES = {("sollol_llamacpp.estimate", "MODEL_PROFILES")}


def plugin_packages() -> list[str]:
    packages = {"sollol_core.builtin"}
    for ep in importlib.metadata.entry_points(group="sollol"):
        if ep.dist is not None and ep.dist.name.startswith("sollol-"):
            packages.add(ep.value.split(":")[0].split(".")[0])
    return sorted(packages)


def modules_of(package: str) -> Iterator[types.ModuleType]:
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        yield importlib.import_module(info.name)


def immutable(value: Any, table: bool = False) -> bool:
    """Whether ``value`` cannot hold a router's state. ``table``: a constant's value (an
    UPPER_CASE name), where a lookup table of immutable values is read, never written."""
    if isinstance(value, IMMUTABLE) or typing.get_origin(value) is not None:
        return True
    if isinstance(value, tuple) or (table and isinstance(value, set | list)):
        return all(immutable(item, table) for item in value)
    if table and isinstance(value, dict):
        return all(immutable(k, table) and immutable(v, table) for k, v in value.items())
    if inspect.ismodule(value) or inspect.isclass(value):
        return True
    if inspect.isroutine(value):  # a cache of a pure function is no router's state
        return True
    frozen = getattr(type(value).__setattr__, "__name__", "") == "_frozen_setattrs"
    if attrs.has(type(value)) and frozen:
        return all(immutable(getattr(value, f.name), table) for f in attrs.fields(type(value)))
    return type(value).__module__.split(".")[0] in {"typing", "typing_extensions", "__future__",
                                                    "opentelemetry"}  # samplers: no state


def constant(name: str) -> bool:
    return name.lstrip("_").isupper()


@pytest.mark.parametrize("package", plugin_packages())
def test_no_plugin_module_keeps_mutable_state(package: str) -> None:
    found = [f"{module.__name__}.{name}: {type(value).__name__}"
             for module in modules_of(package)
             for name, value in vars(module).items()
             if not name.startswith("__") and not immutable(value, constant(name))
             and (module.__name__, name) not in USER_TABLES]
    assert found == []


def test_the_check_sees_state() -> None:
    assert not immutable({"a": 1}) and not immutable([1]) and not immutable(set())
    assert not immutable(types.SimpleNamespace())
    assert immutable(types.MappingProxyType({"a": 1})) and immutable(("a", frozenset()))
    assert immutable({"a": (1, 2)}, table=True) and not immutable({"a": Sessions()}, table=True)
    assert not immutable(Sessions(), table=True)  # a constant's name does not make state one
