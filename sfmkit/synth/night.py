"""A night-time proxy for the Aachen Day-Night protocol, made from any dataset with
ground-truth cameras.

This is **not** Aachen Day-Night: it imitates a night photo with 2D image processing (less
light and camera auto-gain with photon and read noise, a sodium-lamp colour cast, crushed
shadows, glowing and saturated lamps, motion and defocus blur, JPEG). Real night imagery also
changes which surfaces are lit and from where, which no 2D filter can reproduce.

``nightify`` is deterministic for a seed; ``strength`` (0 = a dim evening, 1 = a dark street
with few photons; larger values go further) scales every effect together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import convolve, gaussian_filter


@dataclass(frozen=True)
class NightParams:
    """The effects of one strength.

    Attributes:
        exposure: scene light reaching the sensor, relative to the day image.
        electrons: sensor electrons at full scale for the day exposure; photons per unit of
            radiance at night are ``exposure * electrons`` (1000 at strength 0, 25 at 1,
            4 at 1.5).
        read_noise: read-out noise in electrons.
        sodium: channel multipliers of the sodium-lamp cast (R, G, B).
        black_level: crushed shadows: output black point, in 0..1 after gamma.
        lamps: number of lamp glows.
        motion_blur: motion-blur length in pixels.
        defocus: Gaussian blur sigma in pixels.
        jpeg_quality: JPEG quality of the written night image.
    """

    exposure: float
    electrons: float
    read_noise: float
    sodium: tuple[float, float, float]
    black_level: float
    lamps: int
    motion_blur: float
    defocus: float
    jpeg_quality: int


def night_params(strength: float) -> NightParams:
    """Effects for ``strength`` >= 0 (see module docs)."""
    s = max(0.0, float(strength))
    cast = 0.9 + 0.8 * min(s, 1.5)
    return NightParams(
        exposure=10 ** -(0.6 + 1.6 * s),
        electrons=4000.0,
        read_noise=1.5,
        sodium=(1.0, 0.78**cast, 0.45**cast),
        black_level=0.02 + 0.08 * s,
        lamps=int(round(4 + 6 * s)),
        motion_blur=1.0 + 6.0 * s,
        defocus=0.4 + 0.8 * s,
        jpeg_quality=int(round(max(50, 88 - 25 * s))),
    )


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    size = max(1, int(math.ceil(length)) | 1)
    kernel = np.zeros((size, size))
    c = size // 2
    for t in np.linspace(-length / 2, length / 2, max(2, 4 * size)):
        x, y = int(round(c + t * math.cos(angle))), int(round(c + t * math.sin(angle)))
        if 0 <= x < size and 0 <= y < size:
            kernel[y, x] = 1.0
    return kernel / kernel.sum()


def _lamps(shape: tuple[int, int], count: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Street-lamp glows: a small core far brighter than the scene (it saturates) and a wide,
    faint halo; ``level`` is the mean scene radiance they are relative to."""
    h, w = shape
    scale = max(h, w) / 1024
    field = np.zeros((h, w))
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(1.5, 4.0) * scale
        r = int(8 * 4 * sigma) + 1
        ys, xs = (
            slice(max(int(cy) - r, 0), min(int(cy) + r, h)),
            slice(max(int(cx) - r, 0), min(int(cx) + r, w)),
        )
        yy, xx = np.mgrid[ys, xs]
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)
        field[ys, xs] += level * (
            rng.uniform(20, 60) * np.exp(-d2) + rng.uniform(0.3, 1.0) * np.exp(-d2 / 64)
        )
    return field


def nightify(rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A night-time version of an (H, W, 3) uint8 day image (deterministic for ``rng``)."""
    p = night_params(strength)
    h, w = rgb.shape[:2]
    radiance = _srgb_to_linear(rgb.astype(np.float64) / 255.0) * np.asarray(p.sodium)
    lamps = _lamps((h, w), p.lamps, float(radiance.mean()), rng)
    exposed = (radiance + lamps[..., None] * np.array([1.0, 0.72, 0.35])) * p.exposure
    # optics: defocus, then camera shake
    exposed = gaussian_filter(exposed, sigma=(p.defocus, p.defocus, 0))
    kernel = _motion_kernel(p.motion_blur, rng.uniform(0, math.pi))
    exposed = np.stack([convolve(exposed[..., c], kernel, mode="nearest") for c in range(3)], axis=2)
    # sensor: photon (shot) noise and read noise, then the camera's auto gain
    electrons = rng.poisson(np.clip(exposed, 0, None) * p.electrons).astype(np.float64)
    electrons += rng.normal(0, p.read_noise, electrons.shape)
    signal = electrons / p.electrons
    # auto gain towards a dim target, never brighter than 70% of the day image
    gain = min(0.05 / max(float(np.median(signal)), 1e-9), 0.7 / p.exposure)
    out = _linear_to_srgb(signal * gain)
    out = np.clip((out - p.black_level) / (1 - p.black_level), 0, 1)
    return np.round(out * 255).astype(np.uint8)


def params_dict(strength: float) -> dict:
    return {"strength": strength, **asdict(night_params(strength))}
