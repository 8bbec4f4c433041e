"""Coarse-to-fine dense matching (Widya et al. 2018).

Mutual nearest neighbours over the whole coarse grid (pool4), then, inside each coarse match,
mutual nearest neighbours again between the fine cells (pool3) under the two matched coarse
cells: their 2x2 children, optionally widened by ``radius`` fine cells. Everything is batched
over the coarse matches; there is no per-match Python loop.
"""

from __future__ import annotations

import torch

from sfmkit.matching.mutual_nn import mutual_nn


def _windows(
    coarse_idx: torch.Tensor, coarse_w: int, fine_shape: tuple[int, int], radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine-cell indices (M, S) under each coarse cell and their validity mask (M, S)."""
    steps = torch.arange(-radius, 2 + radius, device=coarse_idx.device)
    dr, dc = torch.meshgrid(steps, steps, indexing="ij")
    r = (coarse_idx // coarse_w)[:, None] * 2 + dr.reshape(1, -1)
    c = (coarse_idx % coarse_w)[:, None] * 2 + dc.reshape(1, -1)
    h, w = fine_shape
    valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    index = (r.clamp(0, h - 1) * w + c.clamp(0, w - 1)).long()
    return index, valid


def one_to_one(idx0: torch.Tensor, idx1: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Mask keeping only matches that are the best-scoring one of both their indices."""
    order = torch.argsort(score, descending=True, stable=True)
    first = _first_occurrence(idx0[order]) & _first_occurrence(idx1[order])
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep[order[first]] = True
    return keep


def _first_occurrence(values: torch.Tensor) -> torch.Tensor:
    """Mask of the first occurrence of each value in ``values`` (in their order)."""
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=values.device)
    sorted_vals, perm = torch.sort(values, stable=True)
    first_sorted = torch.ones_like(sorted_vals, dtype=torch.bool)
    first_sorted[1:] = sorted_vals[1:] != sorted_vals[:-1]
    mask = torch.zeros_like(first_sorted)
    mask[perm] = first_sorted
    return mask


def coarse_to_fine(
    coarse0: torch.Tensor,
    coarse1: torch.Tensor,
    coarse_shape0: tuple[int, int],
    coarse_shape1: tuple[int, int],
    fine0: torch.Tensor,
    fine1: torch.Tensor,
    fine_shape0: tuple[int, int],
    fine_shape1: tuple[int, int],
    *,
    radius: int = 0,
    min_similarity: float | None = None,
    ratio: float | None = None,
    coarse_matches: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense matches between two images.

    Args:
        coarse0, coarse1: (Nc, Dc) L2-normalised coarse descriptors, row-major grids.
        coarse_shape0, coarse_shape1: (h, w) of the coarse grids.
        fine0, fine1: (Nf, Df) L2-normalised fine descriptors, row-major grids.
        fine_shape0, fine_shape1: (h, w) of the fine grids (about twice the coarse ones).
        radius: extra fine cells searched around the 2x2 children of a coarse match.
        min_similarity: optional lower bound on fine similarities.
        ratio: optional Lowe ratio on the coarse descriptors (both directions): a coarse cell
            with two similar candidates is not matched, nor are its fine cells.
        coarse_matches: the coarse mutual matches when already computed (idx0, idx1; the
            ratio test is then the caller's).

    Returns:
        Fine indices idx0 (M,), idx1 (M,) and their cosine similarity (M,); one-to-one.
    """
    c0, c1 = mutual_nn(coarse0, coarse1, ratio=ratio)[:2] if coarse_matches is None else coarse_matches
    device = fine0.device
    if len(c0) == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty, torch.empty(0, device=device)
    win0, valid0 = _windows(c0, coarse_shape0[1], fine_shape0, radius)
    win1, valid1 = _windows(c1, coarse_shape1[1], fine_shape1, radius)
    sim = torch.bmm(fine0[win0].float(), fine1[win1].float().transpose(1, 2))  # (M, S, S)
    invalid = ~(valid0[:, :, None] & valid1[:, None, :])
    sim = sim.masked_fill(invalid, -2.0)
    best1 = sim.argmax(dim=2)  # (M, S): for each cell of 0, best cell of 1
    best0 = sim.argmax(dim=1)  # (M, S): for each cell of 1, best cell of 0
    s = torch.arange(sim.shape[1], device=device)[None, :]
    mutual = best0.gather(1, best1) == s
    value = sim.gather(2, best1[:, :, None])[:, :, 0]
    keep = mutual & valid0 & (value > -2.0)
    if min_similarity is not None:
        keep &= value >= min_similarity
    idx0 = win0[keep]
    idx1 = win1.gather(1, best1)[keep]
    score = value[keep]
    if radius > 0:
        unique = one_to_one(idx0, idx1, score)
        idx0, idx1, score = idx0[unique], idx1[unique], score[unique]
    return idx0, idx1, score
