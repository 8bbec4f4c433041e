"""GL3D's pairwise overlap ratios (Shen et al. 2018, section 4.3) and overlap masks.

For image sets S_i (3D tracks P(i), or visible mesh triangles T(i)) the one-sided ratio is
|S_i ∩ S_j| / |S_i|; the two-sided ratio is the geometric mean of the two one-sided ones,
|S_i ∩ S_j| / sqrt(|S_i| |S_j|). The combined label is CO_ij = 1 where the common track
ratio CT_ij >= t_sfm (structure-from-motion already proves the overlap), else the mesh
overlap ratio MO_ij. Diagonals are 1 (an image overlaps itself), 0 for an empty set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from PIL import Image


@dataclass(frozen=True)
class LabelThresholds:
    """Attributes:
    t_sfm: CT at or above which CO is 1.
    strong: closed CO interval of strong positives.
    weak: closed CO interval of weak positives.
    """

    t_sfm: float = 0.2
    strong: tuple[float, float] = (0.5, 1.0)
    weak: tuple[float, float] = (0.05, 0.2)


def set_overlap(incidence: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """(N, N) float32 two-sided ratios of the sets in the rows of a (N, M) 0/1 incidence matrix."""
    a = sp.csr_matrix(incidence, dtype=np.float64)
    a.data[:] = 1.0
    common = (a @ a.T).toarray()
    size = np.diag(common).copy()
    denom = np.sqrt(np.outer(size, size))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(denom > 0, common / denom, 0.0)
    return ratio.astype(np.float32)


def track_incidence(points_per_image: list[np.ndarray]) -> sp.csr_matrix:
    """Incidence matrix of the 3D point ids observed by each image."""
    ids = np.unique(
        np.concatenate([np.asarray(p, np.int64) for p in points_per_image] + [np.zeros(0, np.int64)])
    )
    rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(points_per_image)] + [np.zeros(0, int)])
    cols = np.searchsorted(
        ids, np.concatenate([np.asarray(p, np.int64) for p in points_per_image] + [np.zeros(0, np.int64)])
    )
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(points_per_image), len(ids)))


def combined(common_track: np.ndarray, mesh: np.ndarray, t_sfm: float) -> np.ndarray:
    """CO = 1 where CT >= t_sfm, else MO."""
    return np.where(common_track >= t_sfm, 1.0, mesh).astype(np.float32)


def positive_pairs(co: np.ndarray, interval: tuple[float, float]) -> np.ndarray:
    """(M, 2) pairs i < j whose CO lies in the closed ``interval``."""
    lo, hi = interval
    i, j = np.nonzero(np.triu((co >= lo) & (co <= hi), k=1))
    return np.stack([i, j], axis=1).astype(np.int32)


def overlap_mask(pixel_triangles: np.ndarray, seen_by_other: np.ndarray, size: int = 32) -> np.ndarray:
    """(size, size) bool: the cells of image i whose visible triangle is also seen by j.

    ``pixel_triangles`` is image i's ray grid of triangle ids; ``seen_by_other`` is T(j) as a
    bool array over triangles. A cell is set when at least half of its rays qualify.
    """
    ids = pixel_triangles
    hit = np.zeros(ids.shape, np.float32)
    valid = ids >= 0
    hit[valid] = seen_by_other[ids[valid]]
    small = Image.fromarray(hit, mode="F").resize((size, size), Image.BOX)
    return np.asarray(small) >= 0.5
