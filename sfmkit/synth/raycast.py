"""The NumPy ray caster: planar textured rectangles rendered exactly, with no OpenGL.

Used by the tests (a small scene whose every pixel is known exactly, rendered on any machine);
``sfmkit synth`` renders its meshes with pyrender instead (:mod:`sfmkit.synth.gl`).

* :class:`QuadScene` of :class:`TexturedQuad` (a ground plane, a wall, boxes: every face
  planar, so ray casting is exact), :func:`blocks_scene`;
* :func:`arc_cameras`: cameras on an arc in front of the scene;
* :func:`render` (supersampled, Lambertian shading) and :func:`write_dataset` (a Strecha-layout
  folder: images, ``K.txt`` and ground-truth camera files).

Everything is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom

from sfmkit.io.intrinsics import write_intrinsics
from sfmkit.io.strecha import StrechaCamera, write_camera
from sfmkit.synth.cameras import PinholeCamera, intrinsics, look_at
from sfmkit.utils.progress import track

SKY = np.array([185.0, 205.0, 230.0])


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
class QuadScene:
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


def blocks_scene(seed: int = 0, n_boxes: int = 5, texture_size: int = 256) -> QuadScene:
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
    return QuadScene(quads)


def arc_cameras(
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
    k = intrinsics(size, focal_factor)
    cams = []
    for i, azimuth in enumerate(np.linspace(-arc_deg / 2, arc_deg / 2, n)):
        a = np.radians(azimuth + rng.uniform(-2, 2))
        e = np.radians(elevation_deg + rng.uniform(-5, 5) + (4 if i % 2 else -4))
        rr = radius * rng.uniform(0.92, 1.08)
        center = aim + rr * np.array([np.sin(a) * np.cos(e), -np.cos(a) * np.cos(e), np.sin(e)])
        r, t = look_at(center, aim + rng.normal(0, 0.08, 3))
        cams.append(PinholeCamera(k, r, t, width, height))
    return cams


def _bilinear(texture: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h, w = texture.shape[:2]
    x = np.clip(a * (w - 1), 0, w - 1)
    y = np.clip(b * (h - 1), 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    t = texture.astype(np.float64)
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bottom = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _screen_window(
    quad: TexturedQuad, camera: PinholeCamera, s: int, w: int, h: int
) -> tuple[int, int, int, int] | None:
    """Rows/cols (r0, r1, c0, c1) of the supersampled image the quad can cover."""
    cam = quad.corners @ camera.R.T + camera.t
    if np.all(cam[:, 2] <= 1e-6):
        return None
    if np.any(cam[:, 2] <= 1e-6):
        return 0, h, 0, w  # crosses the camera plane: test every pixel
    uv = cam @ camera.K.T
    uv = uv[:, :2] / uv[:, 2:3] * s
    c0, r0 = np.floor(uv.min(0)).astype(int) - 1
    c1, r1 = np.ceil(uv.max(0)).astype(int) + 1
    r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def render(scene: QuadScene, camera: PinholeCamera, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Render ``scene`` from ``camera``.

    Pixel (row i, col j) integrates the scene over ``[j, j+1] x [i, i+1]`` in COLMAP's pixel
    convention (``supersample``^2 rays per pixel).

    Returns:
        (H, W, 3) uint8 image and (H, W) float32 depth (z in the camera frame, inf = sky).
    """
    s = supersample
    w, h = camera.width * s, camera.height * s
    xs = (np.arange(w) + 0.5) / s
    ys = (np.arange(h) + 0.5) / s
    k_inv = np.linalg.inv(camera.K)
    origin = camera.center
    best_t = np.full((h, w), np.inf)
    colour = np.tile(SKY, (h, w, 1))
    for quad in scene.quads:
        window = _screen_window(quad, camera, s, w, h)
        if window is None:
            continue
        r0, r1, c0, c1 = window
        px, py = np.meshgrid(xs[c0:c1], ys[r0:r1])
        pixels = np.stack([px, py, np.ones_like(px)], axis=-1)
        rays = pixels @ (camera.R.T @ k_inv).T  # world directions with camera z = 1
        n = np.cross(quad.u, quad.v)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((quad.origin - origin) @ n) / (rays @ n)
        p = origin + t[..., None] * rays - quad.origin
        a = p @ quad.u / (quad.u @ quad.u)
        b = p @ quad.v / (quad.v @ quad.v)
        sub_t = best_t[r0:r1, c0:c1]
        hit = (t > 1e-6) & (t < sub_t) & (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        if not hit.any():
            continue
        sub_t[hit] = t[hit]
        normal = quad.normal if (origin - quad.origin) @ quad.normal > 0 else -quad.normal
        shade = 0.55 + 0.45 * max(0.0, float(normal @ scene.light))
        colour[r0:r1, c0:c1][hit] = _bilinear(quad.texture, a[hit], b[hit]) * shade
    depth = best_t  # rays have camera-frame z = 1, so the ray parameter is the depth
    image = colour
    if s > 1:
        image = image.reshape(camera.height, s, camera.width, s, 3).mean(axis=(1, 3))
        depth = depth[s // 2 :: s, s // 2 :: s]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), depth.astype(np.float32)


def write_dataset(
    out: Path, scene: QuadScene, cameras: Sequence[PinholeCamera], supersample: int = 2
) -> list[str]:
    """Render every camera; returns the image names."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt_dense_cameras").mkdir(parents=True, exist_ok=True)
    names = []
    for i, cam in enumerate(track(cameras, "render")):
        name = f"{i:04d}.png"
        image, _ = render(scene, cam, supersample)
        Image.fromarray(image).save(out / "images" / name)
        write_camera(
            out / "gt_dense_cameras" / f"{name}.camera",
            StrechaCamera(K=cam.K, R_c2w=cam.R.T, C=cam.center, size=(cam.width, cam.height)),
        )
        names.append(name)
    write_intrinsics(out / "images" / "K.txt", cameras[0].K)
    return names
