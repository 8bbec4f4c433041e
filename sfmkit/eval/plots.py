"""PNG figures for evaluations (matplotlib's object API with the Agg canvas: no global state,
no display needed)."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
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


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_top_view(
    path: Path,
    title: str,
    reference: dict[str, np.ndarray],
    estimates: dict[str, dict[str, np.ndarray]],
    errors: dict[str, dict[str, float]],
    unit: str = "mm",
    unit_scale: float = 1000.0,
) -> Path:
    """Ground-truth and aligned estimated camera centres seen from above (the plane of the
    two main directions of the reference centres), one panel per method, errors annotated."""
    names = sorted(reference)
    ref = np.stack([reference[n] for n in names])
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean)
    axes2 = vt[:2].T

    def project(points: np.ndarray) -> np.ndarray:
        return (points - mean) @ axes2

    fig = Figure(figsize=(5.2 * max(1, len(estimates)), 4.6))
    for i, (method, est) in enumerate(estimates.items(), 1):
        ax = fig.add_subplot(1, max(1, len(estimates)), i)
        r2 = project(ref)
        ax.scatter(r2[:, 0], r2[:, 1], marker="o", facecolors="none", edgecolors="k", label="ground truth")
        for n, (x, y) in zip(names, r2, strict=True):
            ax.annotate(Path(n).stem, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        got = [n for n in names if n in est]
        if got:
            e2 = project(np.stack([est[n] for n in got]))
            ax.scatter(e2[:, 0], e2[:, 1], marker="x", c="tab:red", label=method)
            for n, (x, y) in zip(got, e2, strict=True):
                ax.annotate(
                    f"{unit_scale * errors[method][n]:.1f} {unit}",
                    (x, y),
                    fontsize=6,
                    color="tab:red",
                    xytext=(3, -9),
                    textcoords="offset points",
                )
        missing = len(names) - len(got)
        ax.set_title(
            f"{method}: {len(got)}/{len(names)} registered" + (f" ({missing} missing)" if missing else "")
        )
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title)
    return _save(fig, path)


def plot_cumulative(
    path: Path, title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str
) -> Path:
    """Cumulative curves (x: threshold, log scale; y: percentage) per method."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for method, (x, y) in curves.items():
        ax.plot(x, y, label=method)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of night queries")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def plot_overlap_masks(
    path: Path,
    pairs: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]],
) -> Path:
    """One row per image pair: both images, each with its overlap mask (the part that sees
    what the other image sees) in colour and the rest dark grey.

    ``pairs``: (name_i, name_j, image_i, image_j, mask_ij, mask_ji, caption) with (H, W, 3)
    uint8 images and low-resolution bool masks (upsampled here, nearest neighbour).
    """
    fig = Figure(figsize=(9.0, 3.4 * max(len(pairs), 1)))
    for row, (name_i, name_j, image_i, image_j, mask_ij, mask_ji, caption) in enumerate(pairs):
        for col, (name, image, mask) in enumerate(((name_i, image_i, mask_ij), (name_j, image_j, mask_ji))):
            ax = fig.add_subplot(len(pairs), 2, 2 * row + col + 1)
            h, w = image.shape[:2]
            rows = np.minimum((np.arange(h) * mask.shape[0]) // h, mask.shape[0] - 1)
            cols = np.minimum((np.arange(w) * mask.shape[1]) // w, mask.shape[1] - 1)
            big = mask[rows][:, cols]
            grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.3
            shown = np.where(big[..., None], image.astype(np.float32), grey)
            ax.imshow(np.clip(shown, 0, 255).astype(np.uint8))
            ax.set_title(f"{name}" + (f"  ({caption})" if col == 0 else ""), fontsize=8)
            ax.set_axis_off()
    return _save(fig, path)
