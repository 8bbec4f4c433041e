"""Exact ray-casting of textured rectangles (NumPy; no GPU or OpenGL needed)."""

from __future__ import annotations

import numpy as np

from sfmkit.synth.scene import PinholeCamera, Scene, TexturedQuad

SKY = np.array([185.0, 205.0, 230.0])


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


def render(scene: Scene, camera: PinholeCamera, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
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
