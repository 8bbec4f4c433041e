"""Bounded, order-preserving thread parallelism for NumPy/torch-heavy loops.

Workers compute; the caller's thread consumes results in input order and remains the only
writer of its output file.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def ordered_map(func: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``map(func, items)`` on a thread pool, yielding in order, at most 2 x workers in flight."""
    workers = workers or default_workers()
    if workers <= 1:
        yield from map(func, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
