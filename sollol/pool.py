"""``OllamaPool`` as the guide uses it: ``await OllamaPool.auto_configure()`` in async code, and
``OllamaPool.auto_configure()`` handed straight to a ``HybridRouter`` (which starts it)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from sollol_core import api


class OllamaPool(api.OllamaPool):
    __doc__ = api.OllamaPool.__doc__

    @classmethod
    def auto_configure(cls, **kwargs: Any) -> AutoConfigured:  # type: ignore[override]
        """A pool that discovers its nodes; await it to start it now, or give it to a
        ``HybridRouter``, which starts it on its first request."""
        return AutoConfigured(**kwargs)


class AutoConfigured(OllamaPool):
    """A pool from :meth:`OllamaPool.auto_configure`: awaiting it starts it and gives it back."""

    def __await__(self) -> Generator[Any, None, AutoConfigured]:
        yield from self.start().__await__()
        return self
