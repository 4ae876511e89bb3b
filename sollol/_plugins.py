"""The plugins this API needs, imported when used: a missing one says what to install."""

from __future__ import annotations

import importlib
from typing import Any


def plugin_attribute(module: str, name: str, distribution: str) -> Any:
    """``module.name`` from a plugin; an ImportError naming the distribution without it."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError(f"this needs the {distribution} plugin: pip install {distribution}"
                          ) from None
