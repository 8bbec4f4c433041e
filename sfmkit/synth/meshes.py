"""Procedural textured triangle meshes (trimesh) for the rendered scenes of ``sfmkit synth``.

A scene is a list of :class:`Part` s, each a triangle mesh with per-vertex texture coordinates
and its own texture, so that no two surfaces share texture content (no repeated structure
that would make matching ambiguous). Every part is subdivided to a roughly uniform edge
length: the mesh-overlap labels of ``build-gl3d-labels`` count triangles, which is only
meaningful when triangles are of similar size, as in an MVS mesh.

Everything is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter, zoom

#: Where each face direction (axis, sign) of a "box" mapping lives in the texture atlas
#: (2 columns x 3 rows): adjacent faces of one part never show the same texels.
_ATLAS_COLS, _ATLAS_ROWS = 2, 3


@dataclass(frozen=True)
class Part:
    """An unindexed textured triangle mesh: face ``k`` is vertices ``3k, 3k+1, 3k+2``.

    Attributes:
        vertices: (3F, 3) float64 world coordinates.
        uv: (3F, 2) float32 texture coordinates in [0, 1] (v = 0 at the top row of the texture).
        texture: (H, W, 3) uint8.
        name: a label for debugging.
    """

    vertices: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    name: str = ""

    @property
    def faces(self) -> np.ndarray:
        return np.arange(len(self.vertices)).reshape(-1, 3)

    @property
    def normals(self) -> np.ndarray:
        """(3F, 3) flat per-face normals repeated on each face's vertices."""
        tri = self.vertices.reshape(-1, 3, 3)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return np.repeat(n, 3, axis=0)


def noise_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colourful texture with detail at every scale: smooth colour noise in three octaves,
    then discs, boxes and polygons whose sizes are log-uniform (their number grows with the
    area), then fine grain. Drawn with PIL, so a 2048 x 2048 texture takes a fraction of a second.
    """
    base = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((3, 0.5), (10, 0.3), (max(size // 24, 12), 0.2)):
        small = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
        base += weight * np.asarray(small.resize((size, size), Image.BICUBIC), np.float32)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    count = int(40 * max(size / 256, 1.0) ** 2)
    radii = np.exp(rng.uniform(np.log(size / 150), np.log(size / 10), count))
    centres = rng.uniform(0, size, (count, 2))
    colours = (rng.random((count, 3)) * 255).astype(int)
    kinds = rng.integers(0, 3, count)
    for (cx, cy), r, colour, kind in zip(centres, radii, colours, kinds, strict=True):
        fill = tuple(int(c) for c in colour)
        if kind == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif kind == 1:
            a = r * rng.uniform(0.3, 1.0)
            draw.rectangle((cx - r, cy - a, cx + r, cy + a), fill=fill)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            pts = [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in angles]
            draw.polygon(pts, fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    grain = rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)
    return np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8)


class TextureSource:
    """Textures from procedural noise, or random crops of the photos in a folder."""

    def __init__(self, rng: np.random.Generator, photos: Path | None = None) -> None:
        self.rng = rng
        self.photos: list[Path] = []
        if photos is not None:
            self.photos = sorted(
                p for p in Path(photos).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
            )
            if not self.photos:
                raise FileNotFoundError(f"no .jpg/.png images in texture folder {photos}")

    def __call__(self, size: int) -> np.ndarray:
        if not self.photos:
            return noise_texture(self.rng, size)
        path = self.photos[int(self.rng.integers(len(self.photos)))]
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = int(min(w, h) * self.rng.uniform(0.5, 1.0))
            x0 = int(self.rng.integers(0, w - side + 1))
            y0 = int(self.rng.integers(0, h - side + 1))
            crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        return np.asarray(crop, dtype=np.uint8)


def subdivide(vertices: np.ndarray, faces: np.ndarray, max_edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Split triangles until no edge is longer than ``max_edge``."""
    v, f = trimesh.remesh.subdivide_to_size(vertices, faces, max_edge=max_edge, max_iter=20)
    return np.asarray(v, np.float64), np.asarray(f, np.int64)


def textured_part(
    mesh: trimesh.Trimesh,
    textures: TextureSource,
    *,
    max_edge: float,
    mapping: str = "box",
    texture_size: int = 512,
    name: str = "",
) -> Part:
    """Subdivide ``mesh``, unshare its vertices and give it texture coordinates.

    ``mapping="box"``: each face takes the atlas cell of its dominant normal direction and the
    two other coordinates, normalised over the part's bounding box. ``"top"``: (x, y) over the
    bounding box, for terrain and ground planes.
    """
    v, f = subdivide(np.asarray(mesh.vertices), np.asarray(mesh.faces), max_edge)
    tri = v[f]  # (F, 3, 3)
    verts = tri.reshape(-1, 3)
    lo, hi = verts.min(0), verts.max(0)
    span = np.maximum(hi - lo, 1e-9)
    local = (verts - lo) / span
    if mapping == "top":
        uv = local[:, :2]
    elif mapping == "box":
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        axis = np.argmax(np.abs(n), axis=1)
        cell = axis * 2 + (n[np.arange(len(n)), axis] > 0)
        axis, cell = np.repeat(axis, 3), np.repeat(cell, 3)
        others = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        a = local[np.arange(len(local)), others[:, 0]]
        b = 1.0 - local[np.arange(len(local)), others[:, 1]]  # up in the world is up in the texture
        col, row = cell % _ATLAS_COLS, cell // _ATLAS_COLS
        margin = 0.02
        uv = np.stack(
            [
                (col + margin + (1 - 2 * margin) * a) / _ATLAS_COLS,
                (row + margin + (1 - 2 * margin) * b) / _ATLAS_ROWS,
            ],
            axis=1,
        )
    else:
        raise ValueError(f"unknown texture mapping {mapping!r}")
    return Part(verts, uv.astype(np.float32), textures(texture_size), name)


def combined_mesh(parts: Sequence[Part]) -> trimesh.Trimesh:
    """All parts as one indexed mesh (shared vertices merged), e.g. for ``mesh.ply``."""
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.arange(len(vertices)).reshape(-1, 3)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.merge_vertices()
    return mesh


def _placed(mesh: trimesh.Trimesh, xyz: Sequence[float], yaw: float = 0.0) -> trimesh.Trimesh:
    transform = trimesh.transformations.rotation_matrix(yaw, [0, 0, 1])
    transform[:3, 3] = xyz
    mesh.apply_transform(transform)
    return mesh


def box(extents: Sequence[float], base_center: Sequence[float], yaw: float = 0.0) -> trimesh.Trimesh:
    """A box standing on ``base_center`` (its bottom face centre)."""
    ex = np.asarray(extents, float)
    x, y, z = base_center
    return _placed(trimesh.creation.box(ex), (x, y, z + ex[2] / 2), yaw)


def cylinder(radius: float, height: float, base_center: Sequence[float]) -> trimesh.Trimesh:
    x, y, z = base_center
    return _placed(trimesh.creation.cylinder(radius, height, sections=20), (x, y, z + height / 2))


def sphere(radius: float, center: Sequence[float]) -> trimesh.Trimesh:
    return _placed(trimesh.creation.icosphere(subdivisions=2, radius=radius), center)


def hip_roof(
    extents: Sequence[float], base_center: Sequence[float], yaw: float, rise: float
) -> trimesh.Trimesh:
    """A four-sided roof whose ridge runs along the box's longer side."""
    sx, sy = extents[0] / 2, extents[1] / 2
    ridge = max(sx - sy, 0.0)
    points = np.array(
        [[-sx, -sy, 0], [sx, -sy, 0], [sx, sy, 0], [-sx, sy, 0], [-ridge, 0, rise], [ridge + 1e-3, 0, rise]]
    )
    return _placed(trimesh.convex.convex_hull(points), base_center, yaw)


def heightfield(
    rng: np.random.Generator, size: float, cells: int, amplitude: float, center: Sequence[float] = (0, 0)
) -> trimesh.Trimesh:
    """A square terrain of ``size`` units with smooth random heights (amplitude in units)."""
    n = cells + 1
    coarse = rng.normal(size=(6, 6))
    z = zoom(coarse, n / 6, order=3)[:n, :n]
    z = gaussian_filter(z, 1.0)
    z = amplitude * (z - z.mean()) / max(z.std(), 1e-9)
    xs = np.linspace(-size / 2, size / 2, n) + center[0]
    ys = np.linspace(-size / 2, size / 2, n) + center[1]
    gx, gy = np.meshgrid(xs, ys)
    vertices = np.stack([gx.ravel(), gy.ravel(), z.ravel()], axis=1)
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return trimesh.Trimesh(vertices, faces, process=False)


def ground_height(terrain: trimesh.Trimesh, x: float, y: float) -> float:
    """Height of a heightfield at (x, y) (nearest vertex; terrains are smooth)."""
    v = terrain.vertices
    return float(v[np.argmin((v[:, 0] - x) ** 2 + (v[:, 1] - y) ** 2), 2])
