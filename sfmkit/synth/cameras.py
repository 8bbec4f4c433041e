"""Pinhole cameras shared by both renderers: ``cam_from_world`` poses, COLMAP's pixel convention
(the top-left pixel's centre is (0.5, 0.5)), and the helpers that place them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """``x_cam = R x_world + t`` (cam_from_world); K (3, 3); image (width, height)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


def look_at(
    center: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 0.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """cam_from_world (R, t) of a camera at ``center`` looking at ``target`` (x right, y down)."""
    z = target - center
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, np.float64))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    return r, -r @ center


def intrinsics(size: tuple[int, int], focal_factor: float) -> np.ndarray:
    """K of a centred principal point and focal length ``focal_factor`` x the longer side."""
    w, h = size
    f = focal_factor * max(w, h)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


def camera_towards(
    center: np.ndarray, target: np.ndarray, size: tuple[int, int], focal_factor: float
) -> PinholeCamera:
    """A camera at ``center`` looking at ``target`` (image up = world up, except for nadir views)."""
    d = target - center
    # A camera looking (nearly) straight down takes its image "up" from its heading.
    up = (0.0, 0.0, 1.0) if abs(d[2]) < 0.98 * np.linalg.norm(d) else (d[0] + 1e-3, d[1] + 1e-3, 0.0)
    r, t = look_at(center, target, up)
    return PinholeCamera(intrinsics(size, focal_factor), r, t, size[0], size[1])
