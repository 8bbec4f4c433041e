"""Accuracy of matches against ground-truth cameras: the Sampson error of each verified match
under the fundamental matrix the true cameras imply.

Keypoints are in sfmkit's convention (COLMAP's: the top-left pixel's centre is (0.5, 0.5));
the cameras' intrinsics are taken in the same convention unless ``k_offset`` says how far their
principal point convention is from it. (On Strecha, shifting by 0.5 px changed the median
error of the dense matches by less than 0.001 px, so the benchmarks use 0.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sfmkit.io.h5 import H5Reader
from sfmkit.io.matches import read_verified
from sfmkit.io.pairs import Pair
from sfmkit.io.strecha import StrechaCamera


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def fundamental(cam0: StrechaCamera, cam1: StrechaCamera) -> np.ndarray:
    """F with x1^T F x0 = 0 for homogeneous pixel coordinates of the two cameras."""
    p0, p1 = cam0.pose, cam1.pose
    r = p1.rotation @ p0.rotation.T
    return fundamental_from_pose(cam0.K, cam1.K, r, p1.translation - r @ p0.translation)


def fundamental_from_pose(k0: np.ndarray, k1: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """F of two cameras with calibrations ``k0``, ``k1`` and relative pose x_1 = r x_0 + t."""
    return np.linalg.inv(k1).T @ _skew(t) @ r @ np.linalg.inv(k0)


def sampson_errors(f: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """(M,) Sampson distances in pixels of correspondences (M, 2) x0 <-> x1 under F."""
    h0 = np.column_stack([x0, np.ones(len(x0))])
    h1 = np.column_stack([x1, np.ones(len(x1))])
    fx0 = h0 @ f.T
    ftx1 = h1 @ f
    num = np.einsum("ij,ij->i", h1, fx0)
    den = fx0[:, 0] ** 2 + fx0[:, 1] ** 2 + ftx1[:, 0] ** 2 + ftx1[:, 1] ** 2
    return np.abs(num) / np.sqrt(np.maximum(den, 1e-30))


def verified_sampson(
    features: Path,
    verified: Path,
    pairs: Sequence[Pair],
    cameras: dict[str, StrechaCamera],
    k_offset: float = 0.0,
) -> dict[Pair, np.ndarray]:
    """Sampson errors (pixels) of the verified matches of every pair whose two images have
    ground-truth cameras; keypoints are shifted by ``-k_offset`` into the cameras' convention."""
    out: dict[Pair, np.ndarray] = {}
    with H5Reader(features, "features") as feats, H5Reader(verified, "verified") as ver:
        kpts: dict[str, np.ndarray] = {}
        for pair in pairs:
            if pair[0] not in cameras or pair[1] not in cameras:
                continue
            m = read_verified(ver, pair)
            if m is None or len(m) == 0:
                continue
            for name in pair:
                if name not in kpts:
                    kpts[name] = feats.array((name,), "keypoints").astype(np.float64) - k_offset
            f = fundamental(cameras[pair[0]], cameras[pair[1]])
            out[pair] = sampson_errors(f, kpts[pair[0]][m[:, 0]], kpts[pair[1]][m[:, 1]])
    return out


def summarize(errors: dict[Pair, np.ndarray]) -> dict[str, float]:
    """Median, mean and 90th percentile over all matches, and the share within 1 px."""
    e = np.concatenate(list(errors.values())) if errors else np.zeros(0)
    if e.size == 0:
        return {"matches": 0}
    return {
        "matches": int(e.size),
        "median_px": float(np.median(e)),
        "mean_px": float(e.mean()),
        "p90_px": float(np.percentile(e, 90)),
        "within_1px": float((e < 1).mean()),
    }
