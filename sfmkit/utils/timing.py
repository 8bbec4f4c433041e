"""Wall-clock time and peak memory of named stages, for summaries and ``report.json``.

Peak memory is the process's peak resident set size while the stage ran. On Linux the kernel's
high-water mark is reset when a stage starts (``/proc/self/clear_refs``) and read when it ends
(``VmHWM`` in ``/proc/self/status``), so each stage gets its own peak; elsewhere the figure is
the process's peak so far (``ru_maxrss``), an upper bound.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _reset_peak() -> None:
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class StageTimer:
    """Accumulates wall time and the peak memory per stage name, in insertion order."""

    def __init__(self, after: Callable[[str, BaseException | None], None] | None = None) -> None:
        """``after(name, error)``: called when a stage ends, with the exception it raised (None
        when it finished). An exception of ``after`` itself is logged, never raised: it must not
        replace the stage's own."""
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.after = after

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _reset_peak()
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            self._end(name, start, exc)
            raise
        self._end(name, start, None)

    def _end(self, name: str, start: float, error: BaseException | None) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), round(peak_rss_mb(), 1))
        if self.after is not None:
            try:
                self.after(name, error)
            except Exception as exc:  # noqa: BLE001 - reporting must not break the run
                logger.warning("after stage %s: %s", name, exc)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def as_dict(self) -> dict[str, float]:
        out = {k: round(v, 3) for k, v in self.seconds.items()}
        out["total"] = round(self.total, 3)
        return out

    def peak_memory(self) -> dict[str, float]:
        """Peak resident memory per stage (MB) and ``max`` over the stages."""
        return {**self.peak_mb, "max": max(self.peak_mb.values(), default=0.0)}
