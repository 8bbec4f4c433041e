"""Similarity transforms between point sets (Umeyama), plain and robust."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sim3:
    """``y = scale * rotation @ x + translation``."""

    scale: float
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * points @ self.rotation.T + self.translation


def umeyama(src: np.ndarray, dst: np.ndarray) -> Sim3:
    """Least-squares similarity mapping (N, 3) ``src`` onto ``dst`` (Umeyama 1991), N >= 3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if len(src) < 3 or src.shape != dst.shape:
        raise ValueError(f"need >= 3 matching 3D points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[2, 2] = -1
    rotation = u @ s @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ s) / var_s) if var_s > 0 else 1.0
    return Sim3(scale, rotation, mu_d - scale * rotation @ mu_s)


def robust_umeyama(
    src: np.ndarray,
    dst: np.ndarray,
    threshold: float | None = None,
    iterations: int = 500,
    seed: int = 0,
) -> tuple[Sim3, np.ndarray]:
    """RANSAC over minimal 3-point sets, then least squares on the inliers.

    Args:
        src, dst: (N, 3) corresponding points.
        threshold: inlier distance after alignment; default 5% of the extent of ``dst``.

    Returns:
        The transform and the (N,) inlier mask.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    if threshold is None:
        threshold = 0.05 * float(np.linalg.norm(dst.max(0) - dst.min(0)))
    if n <= 3:
        return umeyama(src, dst), np.ones(n, bool)
    rng = np.random.default_rng(seed)
    best_mask, best_err = None, np.inf
    for _ in range(iterations):
        idx = rng.choice(n, 3, replace=False)
        try:
            t = umeyama(src[idx], dst[idx])
        except np.linalg.LinAlgError:
            continue
        err = np.linalg.norm(t.apply(src) - dst, axis=1)
        mask = err < threshold
        score = (mask.sum(), -np.minimum(err, threshold).sum())
        if best_mask is None or score > (best_mask.sum(), -best_err):
            best_mask, best_err = mask, np.minimum(err, threshold).sum()
    if best_mask is None or best_mask.sum() < 3:
        best_mask = np.ones(n, bool)
    for _ in range(3):  # least squares on inliers, re-evaluate inliers
        t = umeyama(src[best_mask], dst[best_mask])
        mask = np.linalg.norm(t.apply(src) - dst, axis=1) < threshold
        if mask.sum() < 3 or np.array_equal(mask, best_mask):
            break
        best_mask = mask
    return umeyama(src[best_mask], dst[best_mask]), best_mask
