"""Camera poses and their file formats.

Poses are ``cam_from_world`` (x_cam = R x_world + t) everywhere; camera centres are
``-R^T t``. Pose files hold ``name qw qx qy qz tx ty tz`` per line (Hamilton quaternion); a
reference may also be a COLMAP model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
from scipy.spatial.transform import Rotation

from sfmkit.errors import SfmkitError


@dataclass(frozen=True)
class Pose:
    """``cam_from_world`` rotation (3, 3) and translation (3,)."""

    rotation: np.ndarray
    translation: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return -self.rotation.T @ self.translation


def model_poses(rec: pycolmap.Reconstruction) -> dict[str, Pose]:
    """Poses of the registered images of a pycolmap model, by image name."""
    poses = {}
    for image in rec.images.values():
        if image.has_pose:
            t = image.cam_from_world()
            poses[image.name] = Pose(np.asarray(t.rotation.matrix()), np.asarray(t.translation))
    return poses


def write_pose_file(path: Path, poses: dict[str, Pose]) -> None:
    """``name qw qx qy qz tx ty tz`` per line (cam_from_world, Hamilton quaternion)."""
    lines = []
    for name, pose in sorted(poses.items()):
        x, y, z, w = Rotation.from_matrix(pose.rotation).as_quat()
        values = " ".join(f"{v:.12g}" for v in (w, x, y, z, *pose.translation))
        lines.append(f"{name} {values}")
    Path(path).write_text("\n".join(lines) + "\n")


def read_pose_file(path: Path) -> dict[str, Pose]:
    """Read ``name qw qx qy qz tx ty tz`` lines (cam_from_world); the name may contain spaces."""
    poses: dict[str, Pose] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rsplit(maxsplit=7)
        try:
            w, x, y, z, tx, ty, tz = (float(v) for v in fields[1:])
        except ValueError as exc:
            raise SfmkitError(f"{path}:{number}: expected 'name qw qx qy qz tx ty tz'") from exc
        if len(fields) != 8:
            raise SfmkitError(f"{path}:{number}: expected 'name qw qx qy qz tx ty tz'")
        rotation = Rotation.from_quat([x, y, z, w]).as_matrix()
        poses[fields[0]] = Pose(rotation, np.array([tx, ty, tz]))
    return poses


def read_reference(path: Path) -> dict[str, Pose]:
    """Reference poses from a pose file or a COLMAP model folder."""
    path = Path(path)
    if path.is_dir():
        return model_poses(pycolmap.Reconstruction(path))
    if path.is_file():
        return read_pose_file(path)
    raise SfmkitError(f"no reference poses at {path} (a poses.txt file or a COLMAP model folder)")
