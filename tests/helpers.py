"""Helpers shared by tests (importable as `helpers`)."""

from __future__ import annotations

import numpy as np


def textured_image(seed: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A random smooth colour image (H, W, 3) uint8."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.random((h // 8 + 1, w // 8 + 1, 3))
    img = zoom(coarse, (8, 8, 1), order=1)[:h, :w]
    return (img * 255).astype(np.uint8)
