"""Camera-pose errors of a reconstruction against ground truth, after a similarity alignment.

Poses are ``cam_from_world`` (:class:`sfmkit.io.poses.Pose`); camera centres are ``-R^T t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sfmkit.geometry.sim3 import Sim3, robust_umeyama, umeyama
from sfmkit.io.poses import Pose


def rotation_error_deg(r_ref: np.ndarray, r_est: np.ndarray) -> float:
    """Angle of R_ref R_est^T in degrees: acos((trace - 1) / 2), computed with atan2 of the
    sine and cosine so that small angles keep full precision."""
    r = r_ref @ r_est.T
    cos = (np.trace(r) - 1.0) / 2.0
    sin = np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / 2.0
    return float(np.degrees(np.arctan2(sin, cos)))


@dataclass(frozen=True)
class PoseErrors:
    """Per-camera errors after aligning the estimate to the reference.

    Attributes:
        position: name -> camera-centre error (reference units, e.g. metres).
        rotation: name -> rotation error in degrees.
        missing: reference images not registered in the estimate.
        alignment: the similarity mapping estimate -> reference.
        inliers: names used by the final least-squares alignment.
    """

    position: dict[str, float]
    rotation: dict[str, float]
    missing: list[str]
    alignment: Sim3
    inliers: list[str]

    def summary(self) -> dict[str, Any]:
        pos = np.array(list(self.position.values()))
        rot = np.array(list(self.rotation.values()))

        def stats(v: np.ndarray) -> dict[str, float]:
            if v.size == 0:
                return {"mean": float("nan"), "median": float("nan"), "max": float("nan")}
            return {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max())}

        return {
            "registered": len(self.position),
            "total": len(self.position) + len(self.missing),
            "position": stats(pos),
            "rotation_deg": stats(rot),
        }


def pose_errors(
    reference: dict[str, Pose],
    estimate: dict[str, Pose],
    robust: bool = True,
    align_on: set[str] | None = None,
) -> PoseErrors:
    """Align estimated camera centres to the reference ones and measure the errors.

    Args:
        robust: RANSAC over minimal sets, then least squares on the inliers (a few wrong
            cameras do not drag the alignment); otherwise plain least squares.
        align_on: only these images define the alignment (e.g. the day images of an
            Aachen-style subset); errors are still reported for every registered image.

    Raises:
        ValueError: fewer than 3 registered images to align on.
    """
    common = sorted(set(reference) & set(estimate))
    missing = sorted(set(reference) - set(estimate))
    anchors = [n for n in common if align_on is None or n in align_on]
    if len(anchors) < 3:
        raise ValueError(f"need at least 3 registered reference images to align, got {len(anchors)}")
    src_a = np.stack([estimate[n].center for n in anchors])
    dst_a = np.stack([reference[n].center for n in anchors])
    if robust:
        sim, mask = robust_umeyama(src_a, dst_a)
    else:
        sim, mask = umeyama(src_a, dst_a), np.ones(len(anchors), bool)
    aligned = sim.apply(np.stack([estimate[n].center for n in common]))
    position = {
        n: float(np.linalg.norm(a - reference[n].center)) for n, a in zip(common, aligned, strict=True)
    }
    # world_est -> world_ref is x_ref = s R x_est + t, so R_cam_from_ref = R_cam_from_est @ R^T
    rotation = {
        n: rotation_error_deg(reference[n].rotation, estimate[n].rotation @ sim.rotation.T) for n in common
    }
    inliers = [n for n, m in zip(anchors, mask, strict=True) if m]
    return PoseErrors(position, rotation, missing, sim, inliers)


def mean_relative_rotation_error(ref: dict[str, Pose], est: dict[str, Pose]) -> float:
    """Mean angle between relative rotations R_j R_i^T of all registered pairs (degrees);
    independent of any alignment."""
    names = sorted(set(ref) & set(est))
    errors = [
        rotation_error_deg(ref[b].rotation @ ref[a].rotation.T, est[b].rotation @ est[a].rotation.T)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    return float(np.mean(errors)) if errors else float("nan")
