"""Learning a PCA whitening (:class:`sfmkit.models.whitening.Whitening`) from regional or global
vectors."""

from __future__ import annotations

import logging

import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.models.whitening import Whitening

logger = logging.getLogger(__name__)

#: Rows accumulated into the covariance at a time (bounds the float64 copy).
COVARIANCE_CHUNK = 65_536


def _covariance(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(D, D) float64 sample covariance (divided by N - 1), accumulated in chunks of rows."""
    cov = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for start in range(0, len(x), COVARIANCE_CHUNK):
        block = x[start : start + COVARIANCE_CHUNK].astype(np.float64) - mean
        cov += block.T @ block
    return cov / (len(x) - 1)


def _principal_directions(cov: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest eigenvalues of a symmetric matrix and their eigenvectors (columns),
    strongest first, each vector's sign fixed (largest-magnitude component positive) so the
    result does not depend on the solver."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:keep]
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(keep)])
    return values[order], vectors * np.where(signs == 0, 1.0, signs)


def learn_whitening(x: np.ndarray, dim: int = 256, eps: float = 1e-6) -> Whitening:
    """PCA whitening of the rows of ``x``.

    Centres, eigen-decomposes the covariance and keeps the ``dim`` strongest directions, or
    min(dim, D, N - 1) with a warning when there are fewer. Each direction's sign is fixed
    (largest-magnitude component positive) so the result does not depend on the solver.

    Args:
        x: (N, D) training vectors (N >= 2), e.g. L2-normalised regional MAC vectors.
        dim: output dimension asked for.
        eps: added to the eigenvalues before the inverse square root.

    Returns:
        The :class:`Whitening`, projection (D_out, D) in float64.
    """
    x = np.asarray(x)
    if x.ndim != 2 or len(x) < 2:
        raise SfmkitError(f"learning a whitening needs (N, D) vectors with N >= 2, got shape {x.shape}")
    if dim < 1:
        raise SfmkitError(f"the whitened dimension must be at least 1, got {dim}")
    n, d = x.shape
    keep = min(dim, d, n - 1)
    if keep < dim:
        logger.warning(
            "whitening keeps %d dimensions instead of %d (%d vectors of dimension %d)", keep, dim, n, d
        )
    mean = x.mean(axis=0, dtype=np.float64)
    cov = _covariance(x, mean)
    if not np.isfinite(cov).all():
        raise SfmkitError("the whitening training vectors contain NaN or infinite values")
    values, vectors = _principal_directions(cov, keep)
    projection = vectors.T / np.sqrt(np.maximum(values, 0.0) + eps)[:, None]
    return Whitening(mean, projection)


def learn_pair_whitening(
    x: np.ndarray,
    pairs: np.ndarray,
    dim: int = 256,
    shrink: float = 0.1,
    eps: float = 1e-6,
    spread: np.ndarray | None = None,
) -> Whitening:
    """Whitening learned from matching pairs (the "learned whitening" of Radenovic et al.,
    "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018).

    With C_S the covariance of the differences of matching pairs, the vectors are first
    multiplied by C_S^(-1/2) (what varies between two views of one place is flattened), then
    rotated onto the ``dim`` strongest principal directions of all vectors in that space (what
    tells places apart is kept). C_S is shrunk towards a multiple of the identity
    (``shrink`` x its mean eigenvalue), so directions seen in few pairs are not blown up.

    Args:
        x: (N, D) training vectors, e.g. L2-normalised MAC vectors of training images.
        pairs: (M, 2) row indices of matching vectors (M >= 1), e.g. strong overlap pairs.
        dim: output dimension (at most D).
        shrink: weight of the identity in the shrunk C_S (0: none).
        eps: added to the eigenvalues of C_S before the inverse square root.
        spread: (K, D) vectors whose mean and principal directions (after flattening) are
            kept instead of ``x``'s, e.g. the regional vectors that R-MAC and PR-MAC compare.

    Returns:
        The :class:`Whitening` (float64 projection (dim, D)), applied like a PCA whitening.
    """
    x = np.asarray(x, np.float64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if x.ndim != 2 or len(x) < 2:
        raise SfmkitError(f"learning a whitening needs (N, D) vectors with N >= 2, got shape {x.shape}")
    if not len(pairs) or pairs.min() < 0 or pairs.max() >= len(x):
        raise SfmkitError(f"learning a pair whitening needs matching pairs among the {len(x)} vectors")
    if not 1 <= dim <= x.shape[1]:
        raise SfmkitError(f"the whitened dimension must be between 1 and {x.shape[1]}, got {dim}")
    if spread is not None:
        spread = np.asarray(spread, np.float64)
        if spread.ndim != 2 or len(spread) < 2 or spread.shape[1] != x.shape[1]:
            raise SfmkitError(f"the spread vectors must be (K >= 2, {x.shape[1]}), got shape {spread.shape}")
    kept = x if spread is None else spread
    mean = kept.mean(axis=0)
    diff = x[pairs[:, 0]] - x[pairs[:, 1]]
    within = diff.T @ diff / len(diff)
    within += (shrink * np.trace(within) / len(within) + eps) * np.eye(len(within))
    if not np.isfinite(within).all():
        raise SfmkitError("the whitening training vectors contain NaN or infinite values")
    values, vectors = np.linalg.eigh(within)
    flatten = (vectors / np.sqrt(values)) @ vectors.T  # C_S^(-1/2), symmetric
    _, vectors = _principal_directions(_covariance((kept - mean) @ flatten.T, np.zeros(len(mean))), dim)
    return Whitening(mean, vectors.T @ flatten)
