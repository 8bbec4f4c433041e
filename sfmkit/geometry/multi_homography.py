"""Multi-homography RANSAC (the verification of Widya et al. 2018).

Fit a homography with RANSAC (normalised 4-point DLT, then refits on the inliers), remove its
inliers, repeat; stop after ``max_homographies`` or when the best homography has fewer than
``min_inliers`` inliers. The union of the inliers is the verified match set. Hypotheses are
generated and scored in batches (no per-hypothesis Python loop). Deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sfmkit.geometry.homography import dlt, homography_4pt, symmetric_errors


@dataclass(frozen=True)
class RansacParams:
    """Attributes:
    threshold: inlier threshold on the symmetric transfer error, in pixels.
    max_homographies: at most this many homographies per pair.
    min_inliers: stop when the best homography has fewer inliers.
    confidence: RANSAC stops once this probability of an all-inlier sample is reached.
    max_iterations / min_iterations: bounds on the number of hypotheses per homography.
    batch: hypotheses generated together.
    preview_points: hypotheses are first scored on this many random correspondences; only
        the ``preview_keep`` best of each batch are scored on all (preemptive scoring).
    refinements: least-squares refits on the inliers (local optimisation).
    """

    threshold: float = 10.0
    max_homographies: int = 5
    min_inliers: int = 25
    confidence: float = 0.999
    max_iterations: int = 2000
    min_iterations: int = 64
    batch: int = 256
    preview_points: int = 256
    preview_keep: int = 4
    refinements: int = 4


@dataclass(frozen=True)
class HomographySet:
    """Result of :func:`multi_homography_ransac`.

    Attributes:
        inliers: (M,) indices of the verified correspondences.
        labels: (M,) index of the homography each inlier belongs to.
        homographies: (K, 3, 3) homographies, image 0 -> image 1.
    """

    inliers: np.ndarray
    labels: np.ndarray
    homographies: np.ndarray


def _needed_iterations(inlier_ratio: float, confidence: float, sample: int = 4) -> float:
    good = inlier_ratio**sample
    if good <= 0:
        return math.inf
    if good >= 1:
        return 0
    return math.log(1 - confidence) / math.log(1 - good)


def _sample(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    """(batch', 4) index quadruples with four distinct indices each."""
    idx = rng.integers(0, n, size=(batch, 4))
    s = np.sort(idx, axis=1)
    distinct = np.all(s[:, 1:] != s[:, :-1], axis=1)
    return idx[distinct]


def ransac_homography(
    p0: np.ndarray, p1: np.ndarray, params: RansacParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Best homography of (N, 2) correspondences and its inlier mask, or None if N < 4."""
    n = len(p0)
    if n < 4:
        return None
    thr2 = params.threshold**2
    best_h, best_mask, best_count = None, None, -1
    done, needed = 0, float(params.max_iterations)
    while done < max(params.min_iterations, min(needed, params.max_iterations)):
        samples = _sample(rng, n, params.batch)
        done += params.batch
        if len(samples) == 0:
            continue
        hs = homography_4pt(p0[samples], p1[samples])
        if n > params.preview_points:
            preview = rng.choice(n, params.preview_points, replace=False)
            score = (symmetric_errors(hs, p0[preview], p1[preview]) < thr2).sum(axis=1)
            hs = hs[np.argsort(-score, kind="stable")[: params.preview_keep]]
        inl = symmetric_errors(hs, p0, p1) < thr2
        counts = inl.sum(axis=1)
        b = int(np.argmax(counts))
        if counts[b] > best_count:
            best_h, best_mask, best_count = hs[b], inl[b], int(counts[b])
            needed = _needed_iterations(best_count / n, params.confidence)
    if best_h is None or best_count < 4:
        return None
    for _ in range(params.refinements):
        h = dlt(p0[best_mask][None], p1[best_mask][None])
        mask = symmetric_errors(h, p0, p1)[0] < thr2
        if mask.sum() < best_count:
            break  # the refit is worse: keep the previous model
        changed = not np.array_equal(mask, best_mask)
        best_h, best_mask, best_count = h[0], mask, int(mask.sum())
        if not changed:
            break
    return best_h, best_mask


def multi_homography_ransac(
    p0: np.ndarray, p1: np.ndarray, params: RansacParams, seed: int | np.random.SeedSequence = 0
) -> HomographySet:
    """Sequential multi-homography RANSAC on correspondences ``p0[i] <-> p1[i]``.

    Args:
        p0, p1: (N, 2) matched points, in pixels.
        params: thresholds and limits.
        seed: seed of the sampler (results are deterministic for a seed).
    """
    rng = np.random.default_rng(seed)
    p0 = np.asarray(p0, np.float64)
    p1 = np.asarray(p1, np.float64)
    remaining = np.arange(len(p0))
    inliers, labels, homographies = [], [], []
    for k in range(params.max_homographies):
        if len(remaining) < params.min_inliers:
            break
        result = ransac_homography(p0[remaining], p1[remaining], params, rng)
        if result is None:
            break
        h, mask = result
        if mask.sum() < params.min_inliers:
            break
        inliers.append(remaining[mask])
        labels.append(np.full(int(mask.sum()), k, np.int8))
        homographies.append(h)
        remaining = remaining[~mask]
    if not inliers:
        return HomographySet(np.empty(0, np.int64), np.empty(0, np.int8), np.empty((0, 3, 3)))
    return HomographySet(np.concatenate(inliers), np.concatenate(labels), np.stack(homographies))
