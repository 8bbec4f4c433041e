"""The LRU cache behind the matchers' per-image caches."""

from __future__ import annotations

from sfmkit.utils.cache import LRUCache


def test_lru_cache_loads_once_and_evicts_the_least_recent_past_its_budget():
    loads: list[str] = []

    def load(key: str) -> str:
        loads.append(key)
        return key * 10

    cache = LRUCache(load, len, budget=25, keep=1)
    assert cache.get("a") == "a" * 10 and cache.get("b") == "b" * 10
    cache.get("a")  # a is now the most recent
    cache.get("c")  # 30 > 25: b, the least recent, goes
    cache.get("a")
    cache.get("b")
    assert loads == ["a", "b", "c", "b"]
