"""SIFT through pycolmap (COLMAP's own implementation), so the same pipeline runs the
classic baseline. Keypoints keep their scale and orientation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pycolmap

from sfmkit.errors import ConfigError
from sfmkit.io.images import LoadedImage


@dataclass(frozen=True)
class SiftConf:
    """COLMAP SIFT extraction (defaults are COLMAP's).

    Attributes:
        name: preset name.
        max_size: longer image side (COLMAP's default ``max_image_size`` is 3200).
        max_num_features: keep at most this many keypoints (largest scales first, as COLMAP).
        peak_threshold: DoG peak threshold.
        estimate_affine_shape / domain_size_pooling: COLMAP's DSP-SIFT variants.
    """

    kind: ClassVar[str] = "sift"
    default_matcher: ClassVar[str] = "mnn-ratio"
    default_verification: ClassVar[str] = "none"
    default_refinement: ClassVar[str] = "none"
    dense: ClassVar[bool] = False

    name: str = "sift"
    max_size: int = 3200
    max_num_features: int = 8192
    peak_threshold: float = 0.02 / 3
    estimate_affine_shape: bool = False
    domain_size_pooling: bool = False

    def __post_init__(self) -> None:
        if self.max_size < 64 or self.max_num_features < 1 or self.peak_threshold <= 0:
            raise ConfigError("SIFT needs max_size >= 64, max_num_features >= 1 and peak_threshold > 0")

    def with_weights(self, weights: str) -> SiftConf:
        """SIFT has no weights: always an error."""
        raise ConfigError(f"--weights applies to dense VGG16 and multiscale-kp features, not {self.name}")


class SiftExtractor:
    """Callable SIFT extractor (CPU; COLMAP's GPU SIFT needs an OpenGL/CUDA build)."""

    def __init__(self, conf: SiftConf, device: object = None) -> None:
        self.conf = conf
        options = pycolmap.FeatureExtractionOptions()
        options.max_image_size = -1
        options.sift.max_num_features = conf.max_num_features
        options.sift.peak_threshold = conf.peak_threshold
        options.sift.estimate_affine_shape = conf.estimate_affine_shape
        options.sift.domain_size_pooling = conf.domain_size_pooling
        self._sift = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)

    def __call__(self, image: LoadedImage) -> dict[str, np.ndarray]:
        gray = np.round(image.gray()).astype(np.uint8)
        keypoints, descriptors = self._sift.extract_from_uint8_array(np.ascontiguousarray(gray))
        kpts = pycolmap.keypoints_to_matrix(keypoints).reshape(-1, 4)
        desc = np.asarray(descriptors.data, dtype=np.uint8).reshape(-1, 128)
        scale = np.asarray(image.scale, np.float32)
        return {
            # COLMAP's SIFT already uses the top-left-pixel-centre-at-0.5 convention.
            "keypoints": (kpts[:, :2] * scale).astype(np.float32),
            "descriptors": np.ascontiguousarray(desc.T),
            "scores": kpts[:, 2].astype(np.float32),
            "scales": (kpts[:, 2] * scale.mean()).astype(np.float32),
            "orientations": kpts[:, 3].astype(np.float32),
            "image_size": np.asarray(image.size, np.int32),
            "scale": np.asarray(image.scale, np.float64),
        }
