"""Mutual nearest neighbours between two sets of L2-normalised descriptors (torch)."""

from __future__ import annotations

import torch


def _merge_top2(
    vals: torch.Tensor, idx: torch.Tensor, new_vals: torch.Tensor, new_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the two largest of (2, N) running and (k, N) new candidates, per column."""
    all_vals = torch.cat([vals, new_vals], 0)
    all_idx = torch.cat([idx, new_idx], 0)
    top = all_vals.topk(2, dim=0)
    return top.values, all_idx.gather(0, top.indices)


def _ratio_ok(best: torch.Tensor, second: torch.Tensor, ratio: float) -> torch.Tensor:
    """Lowe's ratio on Euclidean distances of unit vectors, from cosine similarities."""
    d1 = (2 - 2 * best).clamp_min(0).sqrt()
    d2 = (2 - 2 * second).clamp_min(0).sqrt()
    return d1 < ratio * d2


def mutual_nn(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    *,
    ratio: float | None = None,
    min_similarity: float | None = None,
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matches ``i <-> j`` where each is the other's nearest neighbour.

    Memory stays bounded: similarities are computed ``chunk`` rows at a time.

    Args:
        desc0: (N0, D) L2-normalised descriptors.
        desc1: (N1, D) L2-normalised descriptors.
        ratio: optional Lowe ratio (applied in both directions), e.g. 0.8.
        min_similarity: optional lower bound on the cosine similarity of a match.

    Returns:
        idx0 (M,), idx1 (M,) int64 and similarity (M,) float32.
    """
    n0, n1 = desc0.shape[0], desc1.shape[0]
    empty = torch.empty(0, dtype=torch.long, device=desc0.device)
    if n0 == 0 or n1 == 0:
        return empty, empty, torch.empty(0, device=desc0.device)
    need_second = ratio is not None
    k = 2 if need_second and n1 > 1 else 1
    row_vals, row_idx = [], []
    col_vals = torch.full((2, n1), -2.0, device=desc0.device)
    col_idx = torch.zeros((2, n1), dtype=torch.long, device=desc0.device)
    for start in range(0, n0, chunk):
        sim = desc0[start : start + chunk].float() @ desc1.float().T
        top = sim.topk(k, dim=1)
        row_vals.append(top.values)
        row_idx.append(top.indices)
        kc = min(2, sim.shape[0])
        ctop = sim.topk(kc, dim=0)
        col_vals, col_idx = _merge_top2(col_vals, col_idx, ctop.values, ctop.indices + start)
    rv, ri = torch.cat(row_vals), torch.cat(row_idx)
    nn01, best01 = ri[:, 0], rv[:, 0]
    nn10 = col_idx[0]
    idx0 = torch.arange(n0, device=desc0.device)
    keep = nn10[nn01] == idx0
    if need_second:
        if k == 2:
            keep &= _ratio_ok(best01, rv[:, 1], ratio)
        if n0 > 1:
            keep &= _ratio_ok(col_vals[0], col_vals[1], ratio)[nn01]
    if min_similarity is not None:
        keep &= best01 >= min_similarity
    return idx0[keep], nn01[keep], best01[keep]
