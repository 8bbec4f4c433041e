"""Progress bars for loops over images and pairs (rich, on stderr).

Library code calls :func:`track`; the CLI decides whether bars are shown
(:func:`set_enabled`). Bars are off by default so that library use and tests stay quiet.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_ENABLED = False


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on or off for this process."""
    global _ENABLED
    _ENABLED = enabled


def enabled() -> bool:
    """Whether progress bars are on in this process."""
    return _ENABLED


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar when bars are enabled."""
    if not _ENABLED:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


class Bar:
    """A manually advanced bar (for callbacks, e.g. pycolmap image registration)."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n)

    def describe(self, description: str) -> None:
        """Change the bar's title (e.g. to show the current loss)."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)


@contextmanager
def bar(description: str, total: int | None, completed: int = 0) -> Iterator[Bar]:
    """Context manager yielding a :class:`Bar` (a no-op when bars are disabled)."""
    if not _ENABLED:
        yield Bar(None, None)
        return
    with _progress() as progress:
        yield Bar(progress, progress.add_task(description, total=total, completed=completed))
