"""PNG figures: matplotlib's object API with the Agg canvas (no global state, no display
needed), optionally drawn in a fresh process."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def plot_isolated(plot: Callable[..., Path], path: Path, *args: Any) -> Path | None:
    """Draw ``plot(path, *args)`` in a fresh process; None (and a warning) if it fails.

    Evaluations call this after minutes of reconstruction: on the 2-core machines here, a
    process that has run torch, pycolmap's SIFT and mapping has aborted inside Pillow's PNG
    encoder ("corrupted size vs. prev_size", a heap corrupted by native code beforehand), so
    the figure is drawn where that heap is not, and a failed figure never costs the numbers.
    """
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=plot, args=(path, *args))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        logger.warning("could not draw %s (plot process exited with %s)", path, proc.exitcode)
        return None
    return path


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to the PNG ``path`` (parent folder created); returns ``path``."""
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
