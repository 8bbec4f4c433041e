"""Which mesh triangles each camera sees, by ray casting (open3d ``RaycastingScene``).

Two questions are asked of the mesh:

* the triangle set T(i) of camera i: every triangle whose centroid projects into the image
  and is not hidden, i.e. the first surface hit on the ray from the camera centre towards
  the centroid is that triangle (or lies no nearer). Testing each triangle once makes T(i)
  independent of the image resolution and of how small triangles are on screen;
* the triangle seen at each pixel of a grid over the image (``-1``: nothing), for the masks.

Cameras are pycolmap cameras (any model: rays come from ``cam_from_img``, so distortion is
honoured) with cam_from_world poses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap

from sfmkit.errors import SfmkitError

_CHUNK = 2_000_000


def _open3d():  # type: ignore[no-untyped-def]
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - depends on the system
        raise SfmkitError(
            f"open3d cannot be imported ({exc}); on Debian/Ubuntu install libusb-1.0-0 (apt)"
        ) from exc
    return o3d


def load_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices and (F, 3) int64 faces of a mesh file (PLY, OBJ, ...)."""
    o3d = _open3d()
    if not Path(path).is_file():
        raise SfmkitError(f"mesh file {path} does not exist")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise SfmkitError(f"{path} holds no triangles (is it a point cloud? use --mesh-from-model)")
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64)


class MeshVisibility:
    """Ray casting against one triangle mesh."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        o3d = _open3d()
        self.vertices = np.asarray(vertices, np.float64)
        self.faces = np.asarray(faces, np.int64)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(self.vertices.astype(np.float32)), o3d.core.Tensor(self.faces.astype(np.uint32))
        )
        self.centroids = self.vertices[self.faces].mean(axis=1)
        self._o3d = o3d

    @property
    def num_triangles(self) -> int:
        return len(self.faces)

    def _cast(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hit distance (along unit ``directions``) and triangle id (-1: none) per ray."""
        t_hit = np.empty(len(origins), np.float32)
        ids = np.empty(len(origins), np.int64)
        for s in range(0, len(origins), _CHUNK):
            rays = np.concatenate([origins[s : s + _CHUNK], directions[s : s + _CHUNK]], axis=1)
            ans = self.scene.cast_rays(self._o3d.core.Tensor(rays.astype(np.float32)))
            t_hit[s : s + _CHUNK] = ans["t_hit"].numpy()
            prim = ans["primitive_ids"].numpy().astype(np.int64)
            prim[prim == self.scene.INVALID_ID] = -1
            ids[s : s + _CHUNK] = prim
        return t_hit, ids

    def visible_triangles(self, camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d) -> np.ndarray:
        """(F,) bool: the triangle set T(i) of one camera."""
        m = cam_from_world.matrix()
        r, t = m[:, :3], m[:, 3]
        cam = self.centroids @ r.T + t
        candidates = np.flatnonzero(cam[:, 2] > 1e-9)
        uv = camera.img_from_cam(cam[candidates])
        inside = (uv[:, 0] >= 0) & (uv[:, 0] <= camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= camera.height)
        candidates = candidates[inside & np.isfinite(uv).all(axis=1)]
        seen = np.zeros(self.num_triangles, bool)
        if len(candidates) == 0:
            return seen
        centre = -r.T @ t
        d = self.centroids[candidates] - centre
        dist = np.linalg.norm(d, axis=1)
        t_hit, ids = self._cast(np.broadcast_to(centre, d.shape), d / dist[:, None])
        seen[candidates] = (ids == candidates) | (t_hit >= dist * (1 - 1e-4))
        return seen

    def pixel_triangles(
        self, camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d, grid: tuple[int, int]
    ) -> np.ndarray:
        """(gh, gw) int64: the triangle seen at the centre of each cell of a gw x gh grid."""
        gw, gh = grid
        xs = (np.arange(gw) + 0.5) * camera.width / gw
        ys = (np.arange(gh) + 0.5) * camera.height / gh
        px = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        rays_cam = np.concatenate([camera.cam_from_img(px), np.ones((len(px), 1))], axis=1)
        m = cam_from_world.matrix()
        r, t = m[:, :3], m[:, 3]
        dirs = rays_cam @ r  # R^T applied to each row
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        _, ids = self._cast(np.broadcast_to(-r.T @ t, dirs.shape), dirs)
        return ids.reshape(gh, gw)


def mask_grid(camera: pycolmap.Camera, long_side: int) -> tuple[int, int]:
    """Ray grid (gw, gh) with ``long_side`` cells on the image's longer side."""
    scale = long_side / max(camera.width, camera.height)
    return max(int(round(camera.width * scale)), 1), max(int(round(camera.height * scale)), 1)
