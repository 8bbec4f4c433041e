"""Retrieval metrics: average precision over the top-k ranks and its mean over queries.

Convention (mAP@k): AP@k = (sum over relevant ranks r <= k of precision@r) / min(n_relevant, k),
so a query whose first min(n_relevant, k) results are all relevant scores 1 even when it has
more than k relevant items. A query without relevant items has no AP: it scores 0 alone and
is left out of the mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sfmkit.errors import SfmkitError

logger = logging.getLogger(__name__)


class MapResult(NamedTuple):
    """mAP@k and the number of queries it averages (those with at least one relevant item)."""

    value: float
    queries: int


def _ap_rows(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k of each row of a (Q, >=k) bool matrix of relevant ranks; rows need n_relevant > 0."""
    hits = hits[:, :k].astype(np.float64)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return (precision * hits).sum(axis=1) / np.minimum(n_relevant, k)


def average_precision_at_k(ranked_relevant: np.ndarray, n_relevant: int, k: int) -> float:
    """AP over the top-k ranks of one query (see the module docs).

    Args:
        ranked_relevant: (>= k,) bool, whether the result at each rank is relevant (best
            first); a shorter ranking counts its missing ranks as not relevant.
        n_relevant: relevant items the query has in all (not only in the ranking).
        k: ranks evaluated (at least 1).

    Returns:
        AP@k in [0, 1]; 0 when ``n_relevant`` is 0.
    """
    if k < 1:
        raise SfmkitError(f"k must be at least 1, got {k}")
    hits = np.asarray(ranked_relevant, bool).reshape(-1)[:k]
    if hits.sum() > n_relevant:
        raise SfmkitError(
            f"the ranking holds {int(hits.sum())} relevant items but n_relevant is {n_relevant}"
        )
    if n_relevant == 0:
        return 0.0
    return float(_ap_rows(hits[None], np.array([n_relevant]), k)[0])


def mean_average_precision(
    rankings: np.ndarray, relevant: Sequence[set[int]] | np.ndarray, k: int
) -> MapResult:
    """mAP@k over the queries that have at least one relevant item.

    Args:
        rankings: (Q, >= k) database ids ranked best first; -1 pads missing results (not
            relevant). Fewer than k columns are allowed: the missing ranks are not relevant.
        relevant: the relevant ids of each query, as a list of Q sets or a (Q, N) bool matrix.
        k: ranks evaluated (at least 1).

    Returns:
        :class:`MapResult` ``(value, queries)``: the mean AP@k and how many queries it
        averages; ``value`` is NaN (with a warning) when no query has a relevant item.
        Unpacks as a tuple: ``value, used = mean_average_precision(...)``.
    """
    if k < 1:
        raise SfmkitError(f"k must be at least 1, got {k}")
    ranks = np.asarray(rankings, np.int64)
    if ranks.ndim != 2:
        raise SfmkitError(f"rankings must be a (Q, K) array of ids, got shape {ranks.shape}")
    ranks = ranks[:, :k]
    q = len(ranks)
    if isinstance(relevant, np.ndarray):
        matrix = np.asarray(relevant, bool)
        if matrix.ndim != 2 or len(matrix) != q:
            raise SfmkitError(f"a relevance matrix must be (Q, N) with Q = {q}, got shape {matrix.shape}")
        if ranks.size and ranks.max() >= matrix.shape[1]:
            raise SfmkitError(f"ranking id {ranks.max()} is outside the {matrix.shape[1]} database items")
        hits = np.where(ranks >= 0, matrix[np.arange(q)[:, None], np.maximum(ranks, 0)], False)
        n_relevant = matrix.sum(axis=1)
    else:
        if len(relevant) != q:
            raise SfmkitError(f"{q} rankings but {len(relevant)} relevant sets")
        hits = np.array(
            [[j >= 0 and j in rel for j in row] for row, rel in zip(ranks.tolist(), relevant, strict=True)],
            bool,
        )
        hits = hits.reshape(q, ranks.shape[1])
        n_relevant = np.array([len(rel) for rel in relevant], np.int64)
    used = n_relevant > 0
    if not used.any():
        logger.warning("no query has a relevant item; mAP@%d is undefined", k)
        return MapResult(float("nan"), 0)
    return MapResult(float(np.mean(_ap_rows(hits[used], n_relevant[used], k))), int(used.sum()))
