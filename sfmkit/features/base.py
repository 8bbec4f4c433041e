"""The feature-extractor interface and the per-image record it produces.

Feature files (``features-<tag>.h5``) hold one group per image with at least:

``keypoints``   (N, 2) float32, full-resolution pixels, COLMAP convention (top-left pixel
                centre at (0.5, 0.5));
``descriptors`` (D, N), L2-normalised (float16) or uint8 for SIFT;
``scores``      (N,) float32: the pool3 descriptor norm (dense), the keypoint scale (SIFT);
``image_size``  (2,) int32, [W, H] after EXIF orientation;
``scale``       (2,) float64, full-resolution size / extraction size (sx, sy).

Dense features add ``grid_shape`` (the fine grid, keypoints in row-major order),
``coarse/descriptors`` (Dc, Nc), ``coarse/grid_shape`` and optionally ``norms/<layer>``;
SIFT adds ``scales`` (full-resolution pixels) and ``orientations`` (radians).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from sfmkit.io.images import LoadedImage


class Extractor(Protocol):
    """Turns a decoded image into the datasets of one feature-file item."""

    conf: Any

    def __call__(self, image: LoadedImage) -> dict[str, np.ndarray]:
        """Datasets to store for ``image`` (keys may contain ``/`` for subgroups)."""
        ...
