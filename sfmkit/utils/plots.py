"""PNG figures: matplotlib's object API with the Agg canvas (no global state, no display
needed), optionally drawn in a fresh process."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


logger = logging.getLogger(__name__)


def plot_isolated(plot: Callable[..., Path], path: Path, *args: Any) -> Path | None:
    """Draw ``plot(path, *args)`` in a fresh process; None (and a warning) if it fails.

    Evaluations call this after minutes of reconstruction, so that a failing figure never costs
    the numbers. (The abort that motivated it, Pillow's PNG encoder corrupting the heap in a
    process that had imported pycolmap, has its fix in ``sfmkit/__init__.py``.)
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported on use (slow to load)

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
