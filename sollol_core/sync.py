"""The synchronous mirror of :mod:`sollol_core.api`, for code that does not use asyncio.

The async objects live on one private event loop in a daemon thread, started on first use (never at
import). Every call is handed to that loop and waited for, so it also works from code that already
runs an event loop of its own, e.g. inside a Jupyter cell or an async web handler. Streams come
back as ordinary iterators that pull one chunk at a time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from sollol_core import api
from sollol_core.api import Priority

__all__ = ["HybridRouter", "OllamaPool", "Priority"]

T = TypeVar("T")
#: At exit, how long open routers get to stop what they started (children get SIGKILL after).
CLOSE_AT_EXIT_S = 20.0


class _LoopThread:
    """An event loop running forever in a daemon thread, and the routers made on it: a program
    that never calls ``close()`` still has them closed at exit, so nothing they started (RPC
    workers, coordinators) outlives it."""

    def __init__(self) -> None:
        self.routers: weakref.WeakSet[api.OllamaPool | api.HybridRouter] = weakref.WeakSet()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sollol-sync-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError(
                "sollol_core.sync called from its own event loop; use sollol_core.api")

        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()

    def iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.run(anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None and self.loop.is_running():
                self.run(closer())

    def stop(self) -> None:
        if self.loop.is_running():
            routers = list(self.routers)
            if routers:
                with contextlib.suppress(Exception):  # exiting anyway: children die with us
                    asyncio.run_coroutine_threadsafe(
                        asyncio.wait_for(_close_each(routers), CLOSE_AT_EXIT_S),
                        self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)


async def _close_each(routers: list[api.OllamaPool | api.HybridRouter]) -> None:
    """One after the other: a HybridRouter closes its pool, which is then already closed."""
    for router in routers:
        with contextlib.suppress(Exception):
            await router.close()


_loop: _LoopThread | None = None
_lock = threading.Lock()


def _portal() -> _LoopThread:
    global _loop
    with _lock:
        if _loop is None:
            _loop = _LoopThread()
            # Close the routers before interpreter shutdown stops the thread pools that
            # asyncio.to_thread uses (plugins release NVML, flush traces... through it); plain
            # atexit handlers run after that, when closing could only fail half way.
            try:
                threading._register_atexit(_loop.stop)  # type: ignore[attr-defined]
            except (AttributeError, RuntimeError):  # another Python; or shutdown has begun
                atexit.register(_loop.stop)
        return _loop


def _mirror(method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """A blocking version of an async method of the wrapped object, same name and docstring."""

    @functools.wraps(method)
    def call(self: _Mirror, *args: Any, **kwargs: Any) -> Any:
        portal = _portal()
        result = portal.run(getattr(self._async, method.__name__)(*args, **kwargs))
        if isinstance(result, AsyncIterator):
            return portal.iterate(result)
        return result

    return call


def attribute(name: str) -> Any:
    """A read-only view of the wrapped object's attribute ``name``."""
    return property(lambda self: getattr(self._async, name),
                    doc=f"The wrapped router's ``{name}``.")


class _Mirror:
    _async: Any

    def __enter__(self: T) -> T:
        self.start()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # type: ignore[attr-defined]


class OllamaPool(_Mirror):
    __doc__ = api.OllamaPool.__doc__
    #: The async class mirrored (a subclass may mirror a subclass of it).
    _async_class: type[api.OllamaPool] = api.OllamaPool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        async def build() -> api.OllamaPool:
            return self._async_class(*args, **kwargs)

        portal = _portal()
        self._async = portal.run(build())
        portal.routers.add(self._async)

    @classmethod
    def auto_configure(cls, **kwargs: Any) -> OllamaPool:
        """Discover nodes and start, like :meth:`sollol_core.api.OllamaPool.auto_configure`."""
        pool = cls(**kwargs)
        pool.start()
        return pool

    start = _mirror(api.OllamaPool.start)
    close = _mirror(api.OllamaPool.close)
    chat = _mirror(api.OllamaPool.chat)
    generate = _mirror(api.OllamaPool.generate)
    embed = _mirror(api.OllamaPool.embed)

    def stats(self) -> dict[str, Any]:
        return self._async.stats()  # type: ignore[no-any-return]


class HybridRouter(_Mirror):
    __doc__ = api.HybridRouter.__doc__
    #: The async class mirrored (a subclass may mirror a subclass of it).
    _async_class: type[api.HybridRouter] = api.HybridRouter

    def __init__(self, ollama_pool: OllamaPool | None = None, **kwargs: Any) -> None:
        inner_pool = ollama_pool._async if ollama_pool is not None else None

        async def build() -> api.HybridRouter:
            return self._async_class(inner_pool, **kwargs)

        portal = _portal()
        self._async = portal.run(build())
        portal.routers.add(self._async)

    # what the constructor was given (as the router uses it), as on the async router
    enable_distributed = attribute("enable_distributed")
    auto_discover_rpc = attribute("auto_discover_rpc")
    auto_setup_rpc = attribute("auto_setup_rpc")
    num_rpc_backends = attribute("num_rpc_backends")
    distributed_threshold_params = attribute("distributed_threshold_params")
    coordinator_timeout = attribute("coordinator_timeout")
    gguf_path = attribute("gguf_path")
    layer_strategy = attribute("layer_strategy")

    start = _mirror(api.HybridRouter.start)
    close = _mirror(api.HybridRouter.close)
    route_request = _mirror(api.HybridRouter.route_request)
    should_use_distributed = _mirror(api.HybridRouter.should_use_distributed)

    def get_stats(self) -> dict[str, Any]:
        return self._async.get_stats()  # type: ignore[no-any-return]

    @property
    def coordinator(self) -> Any:
        return self._async.coordinator
