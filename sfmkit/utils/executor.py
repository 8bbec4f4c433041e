"""Where a stage's chunks of work run: in this process (``local``, the default) or as Ray tasks
(``ray``: a local Ray instance with ``workers`` CPUs, or an existing cluster at ``address``).

Ray is imported only when the Ray executor is used, so the local executor never needs it. A
chunk function must be a module-level function (Ray pickles it by reference) that writes its
results to its own file and returns something small; a task whose worker dies is retried
(``max_retries``) and, since its file resumes, redoes only what was not yet written.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sfmkit.errors import ConfigError, SfmkitError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConf:
    """Attributes:
    kind: ``local`` or ``ray``.
    workers: CPUs of the local Ray instance started when ``address`` is None (None: all).
    address: an existing Ray cluster (``auto`` or ``HOST:PORT``); None starts a local instance.
    chunk: items per Ray task (None: about four tasks per worker, at most 64 items each).
    max_retries: times a task whose worker died is run again.
    """

    kind: str = "local"
    workers: int | None = None
    address: str | None = None
    chunk: int | None = None
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.kind!r}; choose among {EXECUTORS}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError("the chunk size must be >= 1")


LOCAL = ExecutorConf()


def require_ray() -> None:
    """A clear error when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray: pip install 'sfmkit[ray]' (or pip install ray)")


def start_ray(conf: ExecutorConf) -> Any:
    """The ``ray`` module, connected to ``conf.address`` or to a local instance (started once).
    Stages call it before they touch their output, so a Ray that cannot start costs nothing."""
    require_ray()
    import ray

    if not ray.is_initialized():
        try:
            if conf.address is not None:
                ray.init(address=conf.address, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=conf.workers, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {conf.address}" if conf.address else "a local Ray instance"
            raise SfmkitError(f"could not start {where}: {exc}") from exc
        logger.info("Ray: %s CPUs", ray.cluster_resources().get("CPU"))
    return ray


def chunks(items: Sequence[T], conf: ExecutorConf, cpus: float) -> list[list[T]]:
    """``items`` in consecutive chunks (order kept), so that each chunk is a fixed set for resume."""
    size = conf.chunk or max(1, min(64, math.ceil(len(items) / max(1, 4 * int(cpus)))))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def run_ray(conf: ExecutorConf, func: Callable[..., R], jobs: Sequence[tuple[Any, ...]]) -> Iterator[R]:
    """Run ``func(*job)`` for every job as a Ray task (one CPU each, no GPU: tasks run on the CPU);
    yields results as tasks finish. If one fails or the caller stops, the others are cancelled,
    so that no task goes on writing after the command has ended."""
    ray = start_ray(conf)
    remote = ray.remote(num_cpus=1, max_retries=conf.max_retries)(func)
    pending = [remote.remote(*job) for job in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
