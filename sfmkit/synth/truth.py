"""Ground truth of rendered scenes as a COLMAP model (exact cameras and surface-point tracks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycolmap

from sfmkit.synth.cameras import PinholeCamera
from sfmkit.synth.meshes import Part


def sample_surface(parts: Sequence[Part], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on the surface, uniform in area, and their (n, 3) uint8 texture colours."""
    tri = np.concatenate([p.vertices.reshape(-1, 3, 3) for p in parts])
    owner = np.concatenate([np.full(len(p.vertices) // 3, k) for k, p in enumerate(parts)])
    uv = np.concatenate([p.uv.reshape(-1, 3, 2) for p in parts])
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(tri), size=n, p=area / area.sum())
    a, b = rng.random((2, n))
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    w = np.stack([1 - a - b, a, b], axis=1)
    xyz = np.einsum("nk,nkd->nd", w, tri[face])
    tex_uv = np.einsum("nk,nkd->nd", w, uv[face])
    colours = np.zeros((n, 3), np.uint8)
    for k, part in enumerate(parts):
        sel = owner[face] == k
        if sel.any():
            h, wd = part.texture.shape[:2]
            col = np.clip((tex_uv[sel, 0] * wd).astype(int), 0, wd - 1)
            row = np.clip((tex_uv[sel, 1] * h).astype(int), 0, h - 1)
            colours[sel] = part.texture[row, col]
    return xyz, colours


def project(camera: PinholeCamera, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (COLMAP convention) and camera-frame depths of world points."""
    cam = xyz @ camera.R.T + camera.t
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ camera.K.T)[:, :2] / z[:, None]
    return uv, z


def visible(
    camera: PinholeCamera, depth: np.ndarray, xyz: np.ndarray, tolerance: float = 0.005
) -> np.ndarray:
    """Which points ``camera`` sees: inside the image and not occluded in its depth map
    (the rendered depth at the pixel within ``tolerance`` relative of the point's depth)."""
    uv, z = project(camera, xyz)
    h, w = depth.shape
    inside = (z > 0) & (uv[:, 0] >= 0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= 0.5) & (uv[:, 1] < h - 0.5)
    ok = np.zeros(len(xyz), bool)
    idx = np.flatnonzero(inside)
    col = np.floor(uv[idx, 0]).astype(int)
    row = np.floor(uv[idx, 1]).astype(int)
    # The nearest of the 2x2 neighbouring pixels in depth: robust at occlusion edges.
    best = np.full(len(idx), np.inf)
    for dr in (-1, 0):
        for dc in (-1, 0):
            r = np.clip(np.floor(uv[idx, 1] + dr + 0.5).astype(int), 0, h - 1)
            c = np.clip(np.floor(uv[idx, 0] + dc + 0.5).astype(int), 0, w - 1)
            best = np.minimum(best, np.abs(depth[r, c] - z[idx]))
    del col, row
    ok[idx] = best < tolerance * z[idx]
    return ok


def truth_model(
    names: Sequence[str],
    cameras: Sequence[PinholeCamera],
    seen: np.ndarray,
    xyz: np.ndarray,
    colours: np.ndarray,
) -> pycolmap.Reconstruction:
    """A COLMAP model with one exact PINHOLE camera per image and a track per surface point
    seen by at least two images (``seen`` is (n_images, n_points) bool)."""
    rec = pycolmap.Reconstruction()
    keep = np.flatnonzero(seen.sum(0) >= 2)
    index_in_image: list[dict[int, int]] = []
    for i, (name, cam) in enumerate(zip(names, cameras, strict=True)):
        k = cam.K
        camera = pycolmap.Camera(
            model="PINHOLE",
            width=cam.width,
            height=cam.height,
            params=[k[0, 0], k[1, 1], k[0, 2], k[1, 2]],
            camera_id=i + 1,
        )
        rec.add_camera_with_trivial_rig(camera)
        pts = keep[seen[i, keep]]
        uv, _ = project(cam, xyz[pts])
        image = pycolmap.Image(
            name=name,
            camera_id=i + 1,
            image_id=i + 1,
            points2D=pycolmap.Point2DList([pycolmap.Point2D(p) for p in uv.astype(np.float64)]),
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(cam.R), cam.t))
        index_in_image.append({int(p): j for j, p in enumerate(pts)})
    for p in keep:
        track = pycolmap.Track()
        for i in np.flatnonzero(seen[:, p]):
            track.add_element(int(i) + 1, index_in_image[i][int(p)])
        rec.add_point3D(xyz[p], track, colours[p])
    return rec


def write_model(rec: pycolmap.Reconstruction, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rec.write(folder)
