"""Feature-map aggregation of "Matchable Image Retrieval by Learning from Surface
Reconstruction" (Shen et al. 2018): MAC, regional MAC, R-MAC, masked MAC and PR-MAC.

Feature maps are (B, D, H, W) tensors (conv5_3 after ReLU). Every descriptor returned is
L2-normalised along D. Regions are rows ``(y0, x0, y1, x1)`` of feature-map cells, half-open
(``fmap[..., y0:y1, x0:x1]``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sfmkit.errors import SfmkitError

logger = logging.getLogger(__name__)

#: Floor of the norms divided by in L2 normalisation (an all-zero vector stays zero).
EPS = 1e-12
#: Entries of the PR-MAC similarity matrix computed at a time (whole images per block).
PRMAC_BLOCK = 1 << 22


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return int(math.floor(x + 0.5))


def _positions(length: int, side: int, count: int) -> list[int]:
    """``count`` start positions evenly spaced from 0 to ``length - side``, rounded."""
    return [_round(p) for p in np.linspace(0.0, length - side, count)]


def rmac_regions(height: int, width: int, levels: int = 3) -> np.ndarray:
    """The R-MAC regions of a ``height`` x ``width`` feature map.

    With L the shorter side, level k (k = 0 .. levels - 1) has n = 2k + 1 square regions along
    the shorter side, of side s = round(2L / (n + 1)) (L, L/2, L/3, ...; at least 1 cell),
    their starts evenly spaced from 0 to L - s, so neighbours overlap by about 50%. Along the
    longer side the level has as many regions (at least n) as keep the step between starts at
    most s/2 (or at most the shorter side's step, which rounding s can make slightly larger),
    also evenly spaced from 0 to the end. A square map thus gets 1 + 9 + 25 = 35 regions at
    3 levels. Positions are rounded half up; on tiny maps (1 x 1, 2 x 3) several regions can
    coincide, and the duplicates are kept, so the count depends only on the map's shape.

    Args:
        height, width: feature-map size in cells (at least 1).
        levels: number of scales (at least 1).

    Returns:
        (R, 4) int64 rows ``(y0, x0, y1, x1)``, half-open, inside the map; ordered by level,
        then row, then column.
    """
    if height < 1 or width < 1:
        raise SfmkitError(f"R-MAC regions need a feature map of at least 1 x 1 cells, got {height} x {width}")
    if levels < 1:
        raise SfmkitError(f"R-MAC needs at least one region level, got {levels}")
    short = min(height, width)
    long = max(height, width)
    rows: list[tuple[int, int, int, int]] = []
    for k in range(levels):
        n = 2 * k + 1
        side = max(1, min(short, _round(2 * short / (n + 1))))
        step = side / 2
        if n > 1:
            step = max(step, (short - side) / (n - 1))
        m = n
        if long > side:
            m = max(n, math.ceil((long - side) / step - 1e-9) + 1)
        short_starts = _positions(short, side, n)
        long_starts = _positions(long, side, m)
        ys, xs = (short_starts, long_starts) if height <= width else (long_starts, short_starts)
        rows.extend((y, x, y + side, x + side) for y in ys for x in xs)
    return np.asarray(rows, np.int64).reshape(-1, 4)


def _check_fmap(fmap: torch.Tensor) -> None:
    if fmap.ndim != 4:
        raise SfmkitError(f"expected a (B, D, H, W) feature map, got shape {tuple(fmap.shape)}")


def mac(fmap: torch.Tensor) -> torch.Tensor:
    """Global max pooling: (B, D, H, W) -> (B, D), L2-normalised."""
    _check_fmap(fmap)
    return F.normalize(fmap.amax(dim=(2, 3)), dim=-1, eps=EPS)


def regional_mac(fmap: torch.Tensor, regions: np.ndarray | Sequence[Sequence[int]]) -> torch.Tensor:
    """Max pooling inside each region.

    Args:
        fmap: (B, D, H, W) feature maps.
        regions: (R, 4) rows ``(y0, x0, y1, x1)``, half-open (see :func:`rmac_regions`).

    Returns:
        (B, R, D), each regional vector L2-normalised.
    """
    _check_fmap(fmap)
    boxes = np.asarray(regions, np.int64).reshape(-1, 4)
    if len(boxes) == 0:
        raise SfmkitError("regional MAC needs at least one region")
    h, w = fmap.shape[2], fmap.shape[3]
    bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > h) | (boxes[:, 3] > w)
    bad |= (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise SfmkitError(
            f"region {boxes[bad][0].tolist()} is empty or outside the {h} x {w} feature map "
            "(regions are half-open rows y0, x0, y1, x1)"
        )
    pooled = [fmap[:, :, y0:y1, x0:x1].amax(dim=(2, 3)) for y0, x0, y1, x1 in boxes.tolist()]
    return F.normalize(torch.stack(pooled, dim=1), dim=-1, eps=EPS)


def rmac(fmap: torch.Tensor, regions: np.ndarray | None = None) -> torch.Tensor:
    """R-MAC: the sum of the normalised regional vectors, L2-normalised: (B, D, H, W) -> (B, D).

    ``regions`` default to :func:`rmac_regions` of the map (3 levels).
    """
    _check_fmap(fmap)
    if regions is None:
        regions = rmac_regions(fmap.shape[2], fmap.shape[3])
    return F.normalize(regional_mac(fmap, regions).sum(dim=1), dim=-1, eps=EPS)


def masked_mac(fmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max pooling over the cells of a mask (the overlap-masked MAC of the mask loss).

    The mask is resized to the map with nearest-neighbour sampling (``nearest-exact``: each
    map cell takes the mask cell under its centre); a cell is inside when its value is above
    0.5 (True for bool masks). Where a mask has no cell inside after resizing, that item falls
    back to global max pooling (plain MAC), silently. Gradients flow to the selected maxima
    only: masked-out cells are filled with -inf, which works whatever the sign of the features.

    Args:
        fmap: (B, D, H, W) feature maps.
        mask: (B, h, w) bool or float masks, at any resolution.

    Returns:
        (B, D), L2-normalised.
    """
    _check_fmap(fmap)
    if mask.ndim != 3 or mask.shape[0] != fmap.shape[0]:
        raise SfmkitError(
            f"expected (B, h, w) masks with B = {fmap.shape[0]} for feature maps of shape "
            f"{tuple(fmap.shape)}, got shape {tuple(mask.shape)}"
        )
    h, w = fmap.shape[2], fmap.shape[3]
    resized = F.interpolate(mask[:, None].to(fmap.device, torch.float32), size=(h, w), mode="nearest-exact")
    inside = resized[:, 0] > 0.5
    empty = ~inside.flatten(1).any(dim=1)
    inside = inside | empty[:, None, None]
    pooled = fmap.masked_fill(~inside[:, None], float("-inf")).amax(dim=(2, 3))
    return F.normalize(pooled, dim=-1, eps=EPS)


def _stack_database(
    db_regions: Sequence[np.ndarray] | np.ndarray, counts: np.ndarray | Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(T, D) concatenated database regions and the (N,) region count of each image."""
    if isinstance(db_regions, np.ndarray) and db_regions.ndim == 3:
        n, rmax = db_regions.shape[:2]
        sizes = np.full(n, rmax, np.int64) if counts is None else np.asarray(counts, np.int64)
        if sizes.shape != (n,) or (sizes < 0).any() or (sizes > rmax).any():
            raise SfmkitError(f"counts must be {n} numbers between 0 and {rmax} for padded (N, R, D) regions")
        return db_regions[np.arange(rmax)[None] < sizes[:, None]], sizes
    if counts is not None:
        raise SfmkitError("counts go with padded (N, R, D) database regions, not with a list")
    arrays = [np.asarray(r) for r in db_regions]
    bad = [a.shape for a in arrays if a.ndim != 2]
    if bad:
        raise SfmkitError(f"each database image needs (Ri, D) regions, got shape {bad[0]}")
    sizes = np.array([len(a) for a in arrays], np.int64)
    used = [a for a in arrays if len(a)]
    if not used:
        return np.zeros((0, 0), np.float32), sizes
    dims = {a.shape[1] for a in used}
    if len(dims) > 1:
        raise SfmkitError(f"database regions have different dimensions: {sorted(dims)}")
    return np.concatenate(used), sizes


def prmac_distances(
    query_regions: np.ndarray,
    db_regions: Sequence[np.ndarray] | np.ndarray,
    counts: np.ndarray | Sequence[int] | None = None,
) -> np.ndarray:
    """PR-MAC distances of one query to database images (paper Eq. 9-10).

    The distance to image i is the sum over the query's regions of the L2 distance to the
    nearest region of image i; smaller is more similar. Regional vectors must be unit length,
    so ``||a - b|| = sqrt(max(0, 2 - 2 a.b))``: one matrix product against the concatenated
    database regions (in blocks of whole images, about :data:`PRMAC_BLOCK` entries each) and a
    segment minimum per image (``np.minimum.reduceat``).

    Args:
        query_regions: (Rq, D) unit query regions.
        db_regions: a list of (Ri, D) unit regions, one per database image, or padded
            (N, Rmax, D) regions with ``counts``.
        counts: (N,) valid regions per image of padded ``db_regions`` (default: all Rmax).

    Returns:
        (N,) float32 distances; +inf for an image without regions.
    """
    q = np.asarray(query_regions)
    if q.ndim != 2 or len(q) == 0:
        raise SfmkitError(f"PR-MAC needs (Rq, D) query regions with Rq >= 1, got shape {q.shape}")
    db, sizes = _stack_database(db_regions, counts)
    out = np.full(len(sizes), np.inf, np.float32)
    if len(db) == 0:
        return out
    if db.shape[1] != q.shape[1]:
        raise SfmkitError(f"query regions are {q.shape[1]}-dimensional but database regions {db.shape[1]}")
    q = q.astype(np.float32, copy=False)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    nonempty = np.flatnonzero(sizes > 0)
    ends = offsets[nonempty + 1]
    per_block = max(1, PRMAC_BLOCK // len(q))
    start = 0
    while start < len(nonempty):
        # whole images at a time; empty images in between hold no rows
        lo = offsets[nonempty[start]]
        stop = max(start + 1, int(np.searchsorted(ends, lo + per_block, side="right")))
        images = nonempty[start:stop]
        sims = q @ db[lo : ends[stop - 1]].astype(np.float32, copy=False).T
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims))
        out[images] = np.minimum.reduceat(dist, offsets[images] - lo, axis=1).sum(axis=0)
        start = stop
    return out
