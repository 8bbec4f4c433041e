"""Atomic file writes: a crash or Ctrl-C leaves the old file or none, never a partial one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def torch_save_atomic(payload: Any, path: Path) -> Path:
    """``torch.save`` ``payload`` to a temporary file beside ``path``, then rename it over
    ``path`` (creating the parent folder); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
