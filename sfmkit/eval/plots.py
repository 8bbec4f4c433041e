"""PNG figures of evaluations: camera centres seen from above, cumulative curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfmkit.utils.plots import save_figure


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

    from matplotlib.figure import Figure  # imported on use: matplotlib is slow to load

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
    return save_figure(fig, path)


def plot_cumulative(
    path: Path, title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str
) -> Path:
    """Cumulative curves (x: threshold, log scale; y: percentage) per method."""
    from matplotlib.figure import Figure  # imported on use: matplotlib is slow to load

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
    return save_figure(fig, path)


def plot_per_factor(
    path: Path, title: str, rates: dict[str, dict[int, tuple[float, float]]], top_k: int
) -> Path:
    """Success rates per down-sampling factor: top-1 (solid) and top-k (dashed) per method.

    Args:
        rates: method -> factor -> (top-1, top-k), fractions.
    """
    from matplotlib.figure import Figure  # imported on use: matplotlib is slow to load

    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, (method, per) in enumerate(rates.items()):
        factors = sorted(per)
        colour = f"C{i}"
        ax.plot(factors, [100 * per[f][0] for f in factors], "-o", color=colour, label=f"{method} top-1")
        ax.plot(
            factors, [100 * per[f][1] for f in factors], "--", color=colour, label=f"{method} top-{top_k}"
        )
    ax.set_ylim(0, 101)
    ax.set_xlabel("down-sampling factor")
    ax.set_ylabel("% of queries found (IoU > 0.7)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return save_figure(fig, path)
