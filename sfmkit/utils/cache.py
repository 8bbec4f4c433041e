"""A least-recently-used cache with a size budget, for per-image data read from stage files."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Values by key, loaded on first use; the least recently used are evicted once the summed
    ``size(value)`` passes ``budget`` (the ``keep`` most recent always stay)."""

    def __init__(
        self, load: Callable[[str], V], size: Callable[[V], int], budget: int, keep: int = 2
    ) -> None:
        self.load, self.size, self.budget, self.keep = load, size, budget, keep
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._total = 0

    def get(self, key: str) -> V:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = self.load(key)
        cost = self.size(value)
        self._items[key] = (value, cost)
        self._total += cost
        while self._total > self.budget and len(self._items) > self.keep:
            _, (_, old) = self._items.popitem(last=False)
            self._total -= old
        return value
