"""Mutual nearest neighbours between two sets of L2-normalised descriptors (torch)."""

from __future__ import annotations

import torch


def _ratio_ok(best: torch.Tensor, second: torch.Tensor, ratio: float) -> torch.Tensor:
    """Lowe's ratio on Euclidean distances of unit vectors, from cosine similarities."""
    d1 = (2 - 2 * best).clamp_min(0).sqrt()
    d2 = (2 - 2 * second).clamp_min(0).sqrt()
    return d1 < ratio * d2


def nearest(
    query: torch.Tensor, database: torch.Tensor, k: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar database rows of every query row: (Nq, k) similarities and
    indices, computed ``chunk`` query rows at a time (memory ~ chunk x Nd)."""
    values, indices = [], []
    db_t = database.float().T.contiguous()
    for start in range(0, query.shape[0], chunk):
        top = (query[start : start + chunk].float() @ db_t).topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def mutual_nn(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    *,
    ratio: float | None = None,
    min_similarity: float | None = None,
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matches ``i <-> j`` where each is the other's nearest neighbour.

    Both directions are computed as row-wise searches (two matrix products in row chunks),
    which keeps memory bounded and avoids slow column reductions.

    Args:
        desc0: (N0, D) L2-normalised descriptors.
        desc1: (N1, D) L2-normalised descriptors.
        ratio: optional Lowe ratio (applied in both directions), e.g. 0.8.
        min_similarity: optional lower bound on the cosine similarity of a match.

    Returns:
        idx0 (M,), idx1 (M,) int64 and similarity (M,) float32.
    """
    n0, n1 = desc0.shape[0], desc1.shape[0]
    if n0 == 0 or n1 == 0:
        empty = torch.empty(0, dtype=torch.long, device=desc0.device)
        return empty, empty, torch.empty(0, device=desc0.device)
    k0 = 2 if ratio is not None and n1 > 1 else 1
    k1 = 2 if ratio is not None and n0 > 1 else 1
    v01, i01 = nearest(desc0, desc1, k0, chunk)
    v10, i10 = nearest(desc1, desc0, k1, chunk)
    idx0 = torch.arange(n0, device=desc0.device)
    nn01 = i01[:, 0]
    keep = i10[nn01, 0] == idx0
    if ratio is not None:
        if k0 == 2:
            keep &= _ratio_ok(v01[:, 0], v01[:, 1], ratio)
        if k1 == 2:
            keep &= _ratio_ok(v10[:, 0], v10[:, 1], ratio)[nn01]
    if min_similarity is not None:
        keep &= v01[:, 0] >= min_similarity
    return idx0[keep], nn01[keep], v01[keep, 0]
