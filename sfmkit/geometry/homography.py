"""Batched homography estimation and transfer errors (NumPy).

Points are (x, y) pixels. ``H`` maps image 0 to image 1: ``x1 ~ H @ [x0, y0, 1]``.
"""

from __future__ import annotations

import numpy as np


def normalization(points: np.ndarray) -> np.ndarray:
    """Hartley normalisation (B, 3, 3) for (B, n, 2) points: centroid 0, mean distance sqrt 2."""
    centroid = points.mean(axis=1, keepdims=True)
    dist = np.linalg.norm(points - centroid, axis=2).mean(axis=1)
    scale = np.sqrt(2.0) / np.maximum(dist, 1e-12)
    t = np.zeros((points.shape[0], 3, 3))
    t[:, 0, 0] = t[:, 1, 1] = scale
    t[:, 0, 2] = -scale * centroid[:, 0, 0]
    t[:, 1, 2] = -scale * centroid[:, 0, 1]
    t[:, 2, 2] = 1.0
    return t


def _apply(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ t[:, :2, :2].transpose(0, 2, 1) + t[:, None, :2, 2]


def dlt(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Normalised DLT for a batch of correspondence sets.

    Args:
        src: (B, n, 2) points of image 0 (n >= 4).
        dst: (B, n, 2) points of image 1.

    Returns:
        (B, 3, 3) homographies scaled to unit Frobenius norm (least squares for n > 4).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    t0, t1 = normalization(src), normalization(dst)
    p, q = _apply(t0, src), _apply(t1, dst)
    b, n = p.shape[:2]
    x, y = p[..., 0], p[..., 1]
    u, v = q[..., 0], q[..., 1]
    zeros, ones = np.zeros_like(x), np.ones_like(x)
    rows_u = np.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y, -u], axis=2)
    rows_v = np.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y, -v], axis=2)
    a = np.concatenate([rows_u, rows_v], axis=1)  # (B, 2n, 9)
    if n == 4:
        a = np.concatenate([a, np.zeros((b, 1, 9))], axis=1)  # square for a full SVD basis
    _, _, vh = np.linalg.svd(a, full_matrices=False)
    hn = vh[:, -1, :].reshape(b, 3, 3)
    h = np.linalg.inv(t1) @ hn @ t0
    return h / np.linalg.norm(h, axis=(1, 2), keepdims=True)


def _basis(points: np.ndarray) -> np.ndarray:
    """(B, 3, 3) maps the projective basis e1, e2, e3, e1+e2+e3 to four (B, 4, 2) points."""
    homog = np.concatenate([points, np.ones(points.shape[:2] + (1,))], axis=2)
    p = homog[:, :3].transpose(0, 2, 1)  # columns p1, p2, p3
    lam = np.einsum("bij,bj->bi", adjugate(p), homog[:, 3])
    return p * lam[:, None, :]


def homography_4pt(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Exact homographies of (B, 4, 2) minimal samples, in closed form (no SVD).

    Through the projective basis of each quadruple: ``H = B_dst @ adj(B_src)``. Degenerate
    samples (three collinear points) give a singular matrix, which scores no inliers.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    # centre and scale each sample for conditioning; undo it afterwards
    t0, t1 = normalization(src), normalization(dst)
    h = _basis(_apply(t1, dst)) @ adjugate(_basis(_apply(t0, src)))
    h = adjugate(t1) @ h @ t0
    norm = np.linalg.norm(h, axis=(1, 2), keepdims=True)
    return h / np.where(norm > 0, norm, 1.0)


def adjugate(h: np.ndarray) -> np.ndarray:
    """Adjugate of (B, 3, 3) matrices: the inverse up to scale, defined even when singular."""
    c = np.empty_like(h)
    c[:, 0, 0] = h[:, 1, 1] * h[:, 2, 2] - h[:, 1, 2] * h[:, 2, 1]
    c[:, 0, 1] = h[:, 0, 2] * h[:, 2, 1] - h[:, 0, 1] * h[:, 2, 2]
    c[:, 0, 2] = h[:, 0, 1] * h[:, 1, 2] - h[:, 0, 2] * h[:, 1, 1]
    c[:, 1, 0] = h[:, 1, 2] * h[:, 2, 0] - h[:, 1, 0] * h[:, 2, 2]
    c[:, 1, 1] = h[:, 0, 0] * h[:, 2, 2] - h[:, 0, 2] * h[:, 2, 0]
    c[:, 1, 2] = h[:, 0, 2] * h[:, 1, 0] - h[:, 0, 0] * h[:, 1, 2]
    c[:, 2, 0] = h[:, 1, 0] * h[:, 2, 1] - h[:, 1, 1] * h[:, 2, 0]
    c[:, 2, 1] = h[:, 0, 1] * h[:, 2, 0] - h[:, 0, 0] * h[:, 2, 1]
    c[:, 2, 2] = h[:, 0, 0] * h[:, 1, 1] - h[:, 0, 1] * h[:, 1, 0]
    return c


def _transfer_sq(h: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(B, N) squared distance between ``h`` applied to src (N, 2) and dst (N, 2)."""
    x, y = src[None, :, 0], src[None, :, 1]
    h = h[:, :, :, None]
    w = h[:, 2, 0] * x + h[:, 2, 1] * y + h[:, 2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (h[:, 0, 0] * x + h[:, 0, 1] * y + h[:, 0, 2]) / w - dst[None, :, 0]
        v = (h[:, 1, 0] * x + h[:, 1, 1] * y + h[:, 1, 2]) / w - dst[None, :, 1]
        err = u * u + v * v
    err[~np.isfinite(err)] = np.inf
    return err


def symmetric_errors(h: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """(B, N) max of the forward and backward squared transfer errors, in pixels^2
    (inf where a point maps to infinity)."""
    return np.maximum(_transfer_sq(h, p0, p1), _transfer_sq(adjugate(h), p1, p0))
