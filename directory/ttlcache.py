"""A small, bounded cache with expiry and single flight, for the event loop.

Many sidecars with one service account connect at once after a directory
restart: ``get_or_load`` sends one review for them all, not one each.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size, self.clock = size, clock
        self.items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self.loading: dict[Hashable, asyncio.Future[V]] = {}

    def get(self, key: Hashable) -> V | None:
        hit = self.items.get(key)
        if hit is None:
            return None
        if hit[0] <= self.clock():
            del self.items[key]
            return None
        self.items.move_to_end(key)
        return hit[1]

    def put(self, key: Hashable, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self.items[key] = (self.clock() + ttl, value)
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V]],
                          ttl: Callable[[V], float]) -> V:
        hit = self.get(key)
        if hit is not None:
            return hit
        flight = self.loading.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self.loading[key] = future
        try:
            value = await load()
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: a lone loader must not log "never retrieved"
            raise
        finally:
            self.loading.pop(key, None)
        self.put(key, value, ttl(value))
        future.set_result(value)
        return value
