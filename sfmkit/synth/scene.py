"""Procedural textured scenes made of planar rectangles, and camera layouts.

A scene is a list of textured rectangles (a ground plane, boxes, walls): a mesh whose every
face is planar, so the ray-casting renderer in :mod:`sfmkit.synth.render` is exact.
Everything is deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, zoom


@dataclass(frozen=True)
class TexturedQuad:
    """A rectangle ``origin + a * u + b * v`` (a, b in [0, 1]) with an (h, w, 3) uint8 texture;
    texture column ~ a, row ~ b."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    texture: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)

    @property
    def corners(self) -> np.ndarray:
        o, u, v = self.origin, self.u, self.v
        return np.stack([o, o + u, o + u + v, o + v])


@dataclass(frozen=True)
class Scene:
    """Textured rectangles plus a light direction (unit vector towards the light)."""

    quads: list[TexturedQuad]
    light: np.ndarray = field(
        default_factory=lambda: np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    )

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        corners = np.concatenate([q.corners for q in self.quads])
        return corners.min(0), corners.max(0)

    @property
    def extent(self) -> float:
        """Diagonal of the bounding box."""
        lo, hi = self.bounds
        return float(np.linalg.norm(hi - lo))


def procedural_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A colourful, non-repeating texture: multi-octave noise plus random discs and bars."""
    img = np.zeros((size, size, 3))
    for octave, weight in ((4, 0.5), (12, 0.3), (40, 0.2)):
        coarse = rng.random((octave + 1, octave + 1, 3))
        img += weight * zoom(coarse, (size / (octave + 1), size / (octave + 1), 1), order=1)[:size, :size]
    for _ in range(int(rng.integers(25, 45))):
        colour = rng.random(3)
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.6:
            r = int(rng.integers(size // 40 + 1, size // 9 + 2))
            ys, xs = slice(max(cy - r, 0), cy + r), slice(max(cx - r, 0), cx + r)
            yy, xx = np.ogrid[ys, xs]
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        else:
            w, h = (int(v) for v in rng.integers(size // 30 + 1, size // 6 + 2, 2))
            ys, xs = slice(max(cy - h, 0), cy + h), slice(max(cx - w, 0), cx + w)
            mask = np.ones((ys.stop - ys.start, xs.stop - xs.start), bool)
        patch = img[ys, xs]
        patch[mask[: patch.shape[0], : patch.shape[1]]] *= 0.35
        patch[mask[: patch.shape[0], : patch.shape[1]]] += 0.65 * colour
    img = gaussian_filter(img, sigma=(0.7, 0.7, 0))
    img = (img - img.min()) / max(img.max() - img.min(), 1e-6)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _box(rng: np.random.Generator, corner: np.ndarray, size: np.ndarray, tex: int) -> list[TexturedQuad]:
    """The five visible faces of an axis-aligned box standing on z = corner[2]."""
    x, y, z = corner
    sx, sy, sz = size
    ex, ey, ez = np.array([sx, 0, 0.0]), np.array([0, sy, 0.0]), np.array([0, 0, sz])
    o = np.array([x, y, z], float)
    faces = [
        (o, ex, ez),  # front (y = y0)
        (o + ey + ex, -ex, ez),  # back
        (o + ey, -ey, ez),  # left (x = x0)
        (o + ex, ey, ez),  # right
        (o + ez, ex, ey),  # top
    ]
    return [TexturedQuad(fo, fu, fv, procedural_texture(rng, tex)) for fo, fu, fv in faces]


def blocks_scene(seed: int = 0, n_boxes: int = 5, texture_size: int = 256) -> Scene:
    """A textured ground plane (about 4 x 4 units), a back wall and ``n_boxes`` boxes."""
    rng = np.random.default_rng(seed)
    quads = [
        TexturedQuad(
            np.array([-2.0, -2.0, 0.0]),
            np.array([4.0, 0, 0]),
            np.array([0, 4.0, 0]),
            procedural_texture(rng, 2 * texture_size),
        ),
        TexturedQuad(
            np.array([-2.0, 2.0, 0.0]),
            np.array([4.0, 0, 0]),
            np.array([0, 0, 1.6]),
            procedural_texture(rng, 2 * texture_size),
        ),
    ]
    placed: list[tuple[float, float, float]] = []
    while len(placed) < n_boxes:
        cx, cy = rng.uniform(-1.4, 1.4, 2)
        r = rng.uniform(0.25, 0.45)
        if all((cx - px) ** 2 + (cy - py) ** 2 > (r + pr + 0.1) ** 2 for px, py, pr in placed):
            placed.append((cx, cy, r))
            size = np.array([2 * r, rng.uniform(1.4, 2.0) * r, rng.uniform(0.4, 1.1)])
            quads += _box(rng, np.array([cx - r, cy - size[1] / 2, 0.0]), size, texture_size)
    return Scene(quads)


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


def orbit_cameras(
    n: int,
    size: tuple[int, int] = (480, 360),
    radius: float = 4.5,
    elevation_deg: float = 35.0,
    arc_deg: float = 80.0,
    target: tuple[float, float, float] = (0.0, 0.3, 0.3),
    focal_factor: float = 1.0,
    seed: int = 0,
) -> list[PinholeCamera]:
    """``n`` cameras on an arc in front of the scene (facing +y), jittered, looking at ``target``."""
    rng = np.random.default_rng(seed)
    aim = np.asarray(target, np.float64)
    width, height = size
    f = focal_factor * max(width, height)
    k = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    cams = []
    for i, azimuth in enumerate(np.linspace(-arc_deg / 2, arc_deg / 2, n)):
        a = np.radians(azimuth + rng.uniform(-2, 2))
        e = np.radians(elevation_deg + rng.uniform(-5, 5) + (4 if i % 2 else -4))
        rr = radius * rng.uniform(0.92, 1.08)
        center = aim + rr * np.array([np.sin(a) * np.cos(e), -np.cos(a) * np.cos(e), np.sin(e)])
        r, t = look_at(center, aim + rng.normal(0, 0.08, 3))
        cams.append(PinholeCamera(k, r, t, width, height))
    return cams
