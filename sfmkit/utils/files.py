"""Atomic file writes: a crash or Ctrl-C leaves the old file or none, never a partial one.

Models, checkpoints, training histories, whitening, ``report.json``, labels and patch files go
through :func:`atomic_path`: the content is written under a temporary name in the same folder
and renamed over the target only when complete. (Small text outputs such as pairs, pose and
``K.txt`` files and evaluation results are still written in place.)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (parent folder created) to write to; renamed over
    ``path`` when the block ends normally, deleted when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # created by the writer itself, so it gets the usual permissions (mkstemp's are 0600)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def torch_save_atomic(payload: Any, path: Path) -> Path:
    """``torch.save`` ``payload`` to ``path`` atomically; returns ``path``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
