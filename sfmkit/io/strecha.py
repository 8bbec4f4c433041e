"""The Strecha multi-view benchmark layout.

A scene folder holds ``images/*.jpg``, ``images/K.txt`` and ``gt_dense_cameras/<image>.camera``.
Each camera file: K (3x3, row-major), 3 distortion values, R (3x3, camera-to-world), C (3,
camera centre, metres), then ``width height``; a world point X projects as K R^T (X - C).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.io.poses import Pose


@dataclass(frozen=True)
class StrechaCamera:
    """Attributes:
    K: (3, 3) intrinsics; R_c2w: (3, 3) camera-to-world rotation; C: (3,) centre;
    size: (width, height).
    """

    K: np.ndarray
    R_c2w: np.ndarray
    C: np.ndarray
    size: tuple[int, int]

    @property
    def pose(self) -> Pose:
        """cam_from_world: R = R_c2w^T, t = -R C."""
        r = self.R_c2w.T
        return Pose(r, -r @ self.C)


def read_camera(path: Path) -> StrechaCamera:
    try:
        values = np.array(Path(path).read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise SfmkitError(f"cannot read Strecha camera file {path}: {exc}") from exc
    if values.size != 26:
        raise SfmkitError(f"{path}: expected 26 numbers (K, distortion, R, C, size), got {values.size}")
    return StrechaCamera(
        K=values[0:9].reshape(3, 3),
        R_c2w=values[12:21].reshape(3, 3),
        C=values[21:24],
        size=(int(values[24]), int(values[25])),
    )


def write_camera(path: Path, camera: StrechaCamera) -> None:
    rows = (
        [" ".join(f"{v:.10g}" for v in camera.K[i]) for i in range(3)]
        + ["0 0 0"]
        + [" ".join(f"{v:.10g}" for v in camera.R_c2w[i]) for i in range(3)]
    )
    rows += [" ".join(f"{v:.10g}" for v in camera.C), f"{camera.size[0]} {camera.size[1]}"]
    Path(path).write_text("\n".join(rows) + "\n")


def read_scene(scene: Path) -> dict[str, StrechaCamera]:
    """Ground-truth cameras of a Strecha scene, keyed by image name (``0000.jpg``)."""
    folder = Path(scene) / "gt_dense_cameras"
    if not folder.is_dir():
        raise SfmkitError(f"{scene} has no gt_dense_cameras/ folder: not a Strecha scene")
    cameras = {p.name.removesuffix(".camera"): read_camera(p) for p in sorted(folder.glob("*.camera"))}
    if not cameras:
        raise SfmkitError(f"{folder} holds no .camera files")
    return cameras
