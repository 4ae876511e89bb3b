"""Several emulators on loopback, started and stopped together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from .emulator import OllamaEmulator


class EmulatorFleet:
    """N :class:`OllamaEmulator` nodes, for fleets of three or more."""

    def __init__(self, emulators: Sequence[OllamaEmulator]) -> None:
        self.emulators: list[OllamaEmulator] = list(emulators)

    @classmethod
    def of(cls, count: int, **kwargs: Any) -> EmulatorFleet:
        """``count`` emulators named ``node0`` .. ``node{count-1}``, each built with ``kwargs``."""
        kwargs.pop("name", None)
        return cls([OllamaEmulator(name=f"node{i}", **kwargs) for i in range(count)])

    @property
    def addresses(self) -> list[str]:
        return [e.address for e in self.emulators]

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.emulators]

    def __getitem__(self, index: int) -> OllamaEmulator:
        return self.emulators[index]

    def __len__(self) -> int:
        return len(self.emulators)

    def __iter__(self) -> Iterator[OllamaEmulator]:
        return iter(self.emulators)

    async def start(self) -> None:
        try:
            await asyncio.gather(*(e.start() for e in self.emulators))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.emulators), return_exceptions=True)

    async def __aenter__(self) -> EmulatorFleet:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
