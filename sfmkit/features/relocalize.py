"""Keypoint relocalisation (Widya, Torii, Okutomi 2018).

A cell of a coarse feature map covers a K x K block of cells of the next finer map (K = 2 for
VGG's 2x2/2 max-pooling). Relocalisation moves the cell to the child with the largest
descriptor L2 norm, and repeats level by level down to ``conv1_2``, which has pixel
resolution. It depends only on the image, so every cell of the matching grid gets exactly one
pixel keypoint, computed once at extraction time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def child_offsets(k: int) -> np.ndarray:
    """(k*k, 2) row/column offsets of the children window relative to ``2 * cell``.

    ``k = 2`` gives exactly the 2x2 children. A larger ``k`` widens the window by
    ``(k - 2) // 2`` cells before the children and the rest after them (symmetric for even
    ``k``); windows are clipped at the image border.
    """
    if k < 2:
        raise ValueError(f"relocalisation window k must be >= 2, got {k}")
    start = -((k - 2) // 2)
    steps = np.arange(start, start + k)
    rows, cols = np.meshgrid(steps, steps, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def relocalize(norms: Sequence[np.ndarray], grid_shape: tuple[int, int], k: int = 2) -> np.ndarray:
    """Relocalise every cell of a ``grid_shape`` grid through finer norm maps.

    Args:
        norms: descriptor-norm maps of the finer levels, coarse to fine, each (h_l, w_l)
            with ``h_l >= 2 * h_{l-1}`` (as VGG's floored pooling guarantees; e.g. pool2,
            pool1, conv1_2 below a pool3 grid).
        grid_shape: (h, w) of the grid being relocalised.
        k: children window size (2 = the cell's own 2x2 children).

    Returns:
        (h * w, 2) int64 (row, col) in the finest map, for the grid cells in row-major order.
    """
    h, w = grid_shape
    rows, cols = np.divmod(np.arange(h * w, dtype=np.int64), w)
    offsets = child_offsets(k)
    for level, norm in enumerate(norms):
        nh, nw = norm.shape
        if nh < 2 * (rows.max(initial=0) + 1) or nw < 2 * (cols.max(initial=0) + 1):
            raise ValueError(f"norm map {level} of shape {norm.shape} is too small for its parent grid")
        cand_r = np.clip(2 * rows[:, None] + offsets[None, :, 0], 0, nh - 1)
        cand_c = np.clip(2 * cols[:, None] + offsets[None, :, 1], 0, nw - 1)
        best = np.argmax(norm[cand_r, cand_c], axis=1)
        pick = np.arange(len(rows))
        rows, cols = cand_r[pick, best], cand_c[pick, best]
    return np.stack([rows, cols], axis=1)


def cells_to_pixels(cells: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """(N, 2) (row, col) pixels of the network input (integer or sub-pixel) -> (N, 2) float32
    (x, y) at full resolution.

    Pixel (row, col) has its centre at ``(col + 0.5, row + 0.5)`` (COLMAP's convention) and is
    scaled by ``scale = (sx, sy)`` to the full-resolution image.
    """
    xy = cells[:, ::-1].astype(np.float64) + 0.5
    return (xy * np.asarray(scale, np.float64)).astype(np.float32)


def _parabola_offset(left: np.ndarray, mid: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Vertex offset of the parabola through (-1, left), (0, mid), (1, right), in [-0.5, 0.5];
    0 where the three values do not form a maximum (curvature >= 0)."""
    curvature = left - 2 * mid + right
    safe = np.where(curvature < 0, curvature, -1.0)
    offset = np.where(curvature < 0, 0.5 * (left - right) / safe, 0.0)
    return np.clip(offset, -0.5, 0.5)


def refine_subpixel(norm: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Sub-pixel positions of relocalised keypoints from their finest norm map.

    Fits a parabola to the norm along each axis through the keypoint and its two neighbours
    (separable quadratic peak interpolation).

    Args:
        norm: (H, W) descriptor norms of the finest map (conv1_2).
        cells: (N, 2) int (row, col) keypoints in that map.

    Returns:
        (N, 2) float64 (row, col), each within 0.5 pixel of ``cells``.
    """
    norm = np.asarray(norm, np.float32)
    h, w = norm.shape
    r, c = cells[:, 0], cells[:, 1]
    up, down = np.clip(r - 1, 0, h - 1), np.clip(r + 1, 0, h - 1)
    left, right = np.clip(c - 1, 0, w - 1), np.clip(c + 1, 0, w - 1)
    mid = norm[r, c]
    dr = _parabola_offset(norm[up, c], mid, norm[down, c])
    dc = _parabola_offset(norm[r, left], mid, norm[r, right])
    return np.stack([r + dr, c + dc], axis=1)
