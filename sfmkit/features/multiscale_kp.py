"""Learned multiscale keypoints with triplet descriptors (``--features multiscale-kp``).

The detector (:class:`sfmkit.models.keypoints.MultiscaleDetector`) runs fully convolutionally
on the grayscale image: its trunk once, then the shared recursive block again and again, the
scoring head after each recursion count in ``levels``. Recursion ``r`` scores patches of side
``64 + 16 r`` on a grid of 8 pixels, so the stack of maps is a scale space. Per grid location
the best scale is kept; a 3 x 3 non-maximum suppression and the ``max_keypoints`` highest scores give the
keypoints, refined to sub-cell precision by a parabola through the neighbouring scores.
Each keypoint's patch (its side at the detected scale) is cut from the image, resized to
64 x 64 and described by :class:`sfmkit.models.keypoints.TripletDescriptor`.

Items of the feature file: ``keypoints``, ``descriptors`` (256, N) float16, ``scores`` (the
detector score), ``scales`` (sigma-equivalent scale in full-resolution pixels, patch side / 12
as in ``build-patches``), ``patch_sizes`` (the patch side in full-resolution pixels),
``image_size``, ``scale``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from sfmkit.errors import ConfigError
from sfmkit.io.images import LoadedImage
from sfmkit.models.keypoints import (
    DESCRIPTOR_INPUT,
    crop_patches,
    describe_patches,
    level_to_pixels,
    load_network,
)

#: Patch side / keypoint scale, as used to make the training patches.
SCALE_FACTOR = 12.0


@dataclass(frozen=True)
class MultiscaleKPConf:
    """Attributes:
    name: preset name.
    max_size: longer image side the detector sees (2400: the 8-pixel detection grid then
        gives about 2,000 keypoints on a 3072 x 2048 Strecha image, against 1,000 at 1600).
    min_size: images whose longer side (after ``max_size``) is smaller are upsampled to it
        before detection and description, as SIFT doubles the image for its first octave: the
        smallest learned patch is 64 pixels and the detection grid 8, too coarse for a 480 x 360
        image (on a rendered 480 x 360 scene at native size: 28% of mutual matches within 2 px
        of their epipolar line and 2 of 28 pairs verified).
    grid: detection grid in pixels: 8 is the trunk's stride; 4 or 2 run the detector on the
        image shifted by 4 (2) pixels per axis too (4 or 16 runs) and interleave the maps.
    max_keypoints: keep the N best keypoints.
    levels: recursion counts scored (patch side 64 + 16 r). The default keeps the five the
        detector was trained on (sides 64 ... 256); on fountain-P11 the untrained counts in
        between give nearly flat maps (standard deviation 0.01-0.11 against 0.29 at r = 0).
    min_score: drop keypoints scoring below this.
    detector, descriptor: weights: ``default`` (shipped), ``random`` or a ``.pt`` file.
    """

    kind: ClassVar[str] = "multiscale_kp"
    default_matcher: ClassVar[str] = "mnn"
    default_verification: ClassVar[str] = "multi-homography"
    default_refinement: ClassVar[str] = "featuremetric"
    dense: ClassVar[bool] = False

    name: str = "multiscale-kp"
    max_size: int = 2400
    min_size: int = 1600
    grid: int = 8
    max_keypoints: int = 4096
    levels: tuple[int, ...] = (0, 2, 4, 8, 12)
    min_score: float = -1.0
    detector: str = "default"
    descriptor: str = "default"

    def __post_init__(self) -> None:
        if self.max_size < 128 or self.max_keypoints < 1 or not self.levels:
            raise ConfigError("multiscale-kp needs max_size >= 128, max_keypoints >= 1 and some levels")
        if self.grid not in (2, 4, 8):
            raise ConfigError("multiscale-kp grid must be 8, 4 or 2 pixels")
        if not 0 <= self.min_size <= self.max_size:
            raise ConfigError("multiscale-kp needs 0 <= min_size <= max_size (0: never upsample)")
        if sorted(set(self.levels)) != list(self.levels) or not 0 <= self.levels[0] <= self.levels[-1] <= 32:
            raise ConfigError("multiscale-kp levels must be distinct recursion counts in 0..32, ascending")

    def with_weights(self, weights: str) -> MultiscaleKPConf:
        """This config with other networks: ``random``, or ``DETECTOR.pt,DESCRIPTOR.pt``."""
        parts = ["random", "random"] if weights == "random" else weights.split(",")
        if len(parts) != 2 or not all(parts):
            raise ConfigError("--weights for multiscale-kp: random, or DETECTOR.pt,DESCRIPTOR.pt")
        return dataclasses.replace(self, detector=parts[0], descriptor=parts[1])


def scale_space(maps: dict[int, torch.Tensor], shape: tuple[int, int], cells: int = 1) -> torch.Tensor:
    """(L, h, w) scores on a grid of ``cells`` samples per trunk cell and axis (``shape`` is
    that grid's size; -inf where a level has no score)."""
    levels = max(maps) + 1
    stack = torch.full((levels, *shape), float("-inf"), device=next(iter(maps.values())).device)
    for r, m in maps.items():
        o = cells * (r + 1)  # the head and each recursion crop one trunk cell per side
        h, w = min(m.shape[0], shape[0] - o), min(m.shape[1], shape[1] - o)
        stack[r, o : o + h, o : o + w] = m[:h, :w]
    return stack


def shifted_score_maps(
    detector: torch.nn.Module, x: torch.Tensor, levels: list[int], step: int
) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
    """Score maps on a grid of ``step`` pixels (8 / step a power of two): the detector runs on
    the image shifted by every multiple of ``step`` below 8 per axis, and the maps are
    interleaved. Grid index ``u`` is pixel ``step * u + 19`` (plus the level's own shift).
    Returns the maps and the grid's shape."""
    k = 8 // step
    runs = {}
    for i in range(k):
        for j in range(k):
            trunk = detector.trunk(x[..., i * step :, j * step :])
            if min(trunk.shape[-2:]) < 3:
                return {}, (0, 0)
            runs[i, j] = (detector.head_maps(trunk, levels), trunk.shape[-2:])
    th = min(t[0] for _, t in runs.values())
    tw = min(t[1] for _, t in runs.values())
    maps: dict[int, torch.Tensor] = {}
    for r in runs[0, 0][0]:
        parts = {ij: m[r] for ij, (m, _) in runs.items() if r in m}
        if len(parts) < k * k:
            continue
        h = min(p.shape[0] for p in parts.values())
        w = min(p.shape[1] for p in parts.values())
        fine = torch.empty(h * k, w * k, device=x.device)
        for (i, j), p in parts.items():
            fine[i::k, j::k] = p[:h, :w]
        maps[r] = fine
    return maps, (th * k, tw * k)


def detect(
    maps: dict[int, torch.Tensor],
    shape: tuple[int, int],
    max_keypoints: int,
    min_score: float,
    step: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints from score maps on a grid of ``step`` pixels (8: the trunk's own grid, see
    :func:`shifted_score_maps`): (N, 2) 0-based pixel coordinates at the detector's input
    resolution, (N,) scores and (N,) recursion levels."""
    stack = scale_space(maps, shape, 8 // step)
    best, level = stack.max(dim=0)
    pooled = F.max_pool2d(best[None, None], 3, stride=1, padding=1)[0, 0]
    keep = (best == pooled) & torch.isfinite(best) & (best >= min_score)
    ys, xs = torch.nonzero(keep, as_tuple=True)
    scores = best[ys, xs]
    if len(scores) > max_keypoints:
        top = scores.topk(max_keypoints).indices
        ys, xs, scores = ys[top], xs[top], scores[top]
    lv = level[ys, xs]
    # sub-cell refinement: a parabola through the neighbours on the keypoint's own level
    h, w = shape

    def offset(c: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        denom = lo - 2 * c + hi
        ok = torch.isfinite(lo) & torch.isfinite(hi) & (denom < 0)
        return torch.where(ok, (0.5 * (lo - hi) / torch.where(ok, denom, -1.0)).clamp(-0.5, 0.5), 0.0)

    centre = stack[lv, ys, xs]
    dx = offset(centre, stack[lv, ys, (xs - 1).clamp(min=0)], stack[lv, ys, (xs + 1).clamp(max=w - 1)])
    dy = offset(centre, stack[lv, (ys - 1).clamp(min=0), xs], stack[lv, (ys + 1).clamp(max=h - 1), xs])
    # trunk index t sits at pixel 8 t + 19 (level_to_pixels with the level's own shift
    # removed); a finer grid has 8 / step samples per trunk cell
    px = level_to_pixels((xs.float() + dx) * step / 8, -1)
    py = level_to_pixels((ys.float() + dy) * step / 8, -1)
    xy = torch.stack([px, py], 1)
    return xy.cpu().numpy(), scores.cpu().numpy(), lv.cpu().numpy()


def describe_keypoints(
    net: torch.nn.Module, gray: torch.Tensor, xy: np.ndarray, sides: np.ndarray, device: torch.device
) -> np.ndarray:
    """(N, D) descriptors of the ``sides``-pixel patches around ``xy`` (0-based, at ``gray``'s
    resolution): the image is shrunk by side / 64 once per side, then 64 x 64 is cut."""
    out = np.zeros((len(xy), getattr(net, "dim", 256)), np.float32)
    h, w = gray.shape
    for side in np.unique(sides):
        sel = np.flatnonzero(sides == side)
        factor = float(side) / DESCRIPTOR_INPUT
        size = (max(1, round(h / factor)), max(1, round(w / factor)))
        small = F.interpolate(
            gray[None, None], size=size, mode="bilinear", antialias=True, align_corners=False
        )[0, 0]
        sx, sy = size[1] / w, size[0] / h
        centres = np.column_stack([(xy[sel, 0] + 0.5) * sx - 0.5, (xy[sel, 1] + 0.5) * sy - 0.5])
        out[sel] = describe_patches(net, crop_patches(small.cpu(), centres, DESCRIPTOR_INPUT), device)
    return out


class MultiscaleKPExtractor:
    """Callable extractor: a decoded image to the feature-file datasets of the module docs."""

    def __init__(self, conf: MultiscaleKPConf, device: torch.device) -> None:
        self.conf, self.device = conf, device
        self.detector, self.detector_card = load_network("detector", conf.detector)
        self.descriptor, self.descriptor_card = load_network("descriptor", conf.descriptor)
        self.detector.to(device)
        self.descriptor.to(device)

    @torch.inference_mode()
    def __call__(self, image: LoadedImage) -> dict[str, np.ndarray]:
        gray = torch.from_numpy(image.gray()).to(self.device)
        h, w = gray.shape
        up = self.conf.min_size / max(h, w)
        if up > 1:
            size = (round(h * up), round(w * up))
            gray = F.interpolate(gray[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
            gray = gray.clamp(0, 255)
        # detector pixels -> loaded-image pixels, per axis
        to_loaded = np.array([w / gray.shape[1], h / gray.shape[0]], np.float64)
        x = (gray / 255.0)[None, None]
        maps, grid_shape = shifted_score_maps(self.detector, x, list(self.conf.levels), self.conf.grid)
        if not maps:
            xy = np.zeros((0, 2), np.float32)
            scores = np.zeros(0, np.float32)
            lv = np.zeros(0, np.int64)
        else:
            xy, scores, lv = detect(
                maps, grid_shape, self.conf.max_keypoints, self.conf.min_score, self.conf.grid
            )
        sides = 64 + 16 * lv
        desc = describe_keypoints(self.descriptor, gray, xy, sides, self.device)
        scale = np.asarray(image.scale, np.float64) * to_loaded
        return {
            "keypoints": ((xy + 0.5) * scale).astype(np.float32),
            "descriptors": np.ascontiguousarray(desc.T).astype(np.float16),
            "scores": scores.astype(np.float32),
            "scales": (sides / SCALE_FACTOR * scale.mean()).astype(np.float32),
            "patch_sizes": (sides * scale.mean()).astype(np.float32),
            "image_size": np.asarray(image.size, np.int32),
            "scale": np.asarray(image.scale, np.float64),
        }
