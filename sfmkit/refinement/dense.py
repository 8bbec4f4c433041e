"""Dense features around keypoints, for featuremetric refinement.

For each keypoint, a square window of side ``S = 2 * half + 1`` pixels centred on its
(rounded) position in the refinement image holds a dense feature map ``(S, S, C)`` (channels
last, so that the C values a sample reads are contiguous), L2-normalised per pixel. Kinds:

``vgg-conv1_2``  VGG16 conv1_2 (64 channels, 5 x 5 receptive field), computed on crops with a
                 2-pixel margin so that no pixel of the window sees zero padding;
``vgg-conv2_2``  VGG16 conv2_2 (128 channels, half resolution, 14 x 14 receptive field),
                 upsampled to pixel resolution;
``vgg-conv1_2+conv2_2``, ``vgg-conv1_2+intensity`` two of these, each normalised,
                 concatenated and normalised again;
``intensity``    the ``w x w`` grey-level window around each pixel, zero-mean and L2-normalised:
                 the distance between two such features is that of normalised cross-correlation
                 (the weight-free ablation).

Only the windows are computed, never the whole image at full resolution, so the cost is
proportional to the number of keypoints and memory stays bounded.

:func:`sample` evaluates features and their exact bilinear derivatives at sub-pixel positions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from sfmkit.io.images import LUMA
from sfmkit.models.vgg import VGG16Trunk

KINDS = ("intensity", "vgg-conv1_2", "vgg-conv2_2", "vgg-conv1_2+conv2_2", "vgg-conv1_2+intensity")
#: Extra pixels around a window so that every window pixel's receptive field is inside the crop.
_MARGIN = {"conv1_2": 2, "conv2_2": 8}
_CHANNELS = {"conv1_2": 64, "conv2_2": 128}


def parts(kind: str) -> list[str]:
    """The feature maps a kind concatenates: ``intensity``, ``conv1_2``, ``conv2_2``."""
    return kind.removeprefix("vgg-").split("+")


def channels(kind: str, window: int = 5) -> int:
    """Feature dimension C of a kind."""
    return sum(_CHANNELS.get(part, window * window) for part in parts(kind))


def window_origins(points: np.ndarray, half: int) -> np.ndarray:
    """(n, 2) integer pixel coordinates (x, y) of the top-left pixel of each keypoint's window:
    the window spans ``origin .. origin + 2 * half`` and holds ``points`` (0-based pixel-centre
    coordinates) at least ``half - 0.5`` pixels from its border."""
    return np.rint(np.asarray(points, np.float64)).astype(np.int64) - half


def _crops(image: torch.Tensor, origins: np.ndarray, size: int) -> torch.Tensor:
    """(n, C, size, size) crops of a (C, H, W) image whose top-left pixels are ``origins``
    (x, y); pixels outside the image repeat the border."""
    _, h, w = image.shape
    steps = torch.arange(size)
    o = torch.from_numpy(origins)
    cols = (o[:, 0, None] + steps[None]).clamp(0, w - 1)
    rows = (o[:, 1, None] + steps[None]).clamp(0, h - 1)
    return image[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension."""
    return F.normalize(x, dim=-1, eps=1e-6)


class WindowFeatures:
    """Computes the feature windows of one kind (see the module docs).

    Args:
        kind: one of :data:`KINDS`.
        trunk: the VGG16 trunk (VGG kinds only).
        window: side of the intensity window (``intensity`` only).
        device: where to compute.
    """

    def __init__(
        self, kind: str, trunk: VGG16Trunk | None, window: int = 5, device: torch.device | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown refinement features {kind!r}; choose among {KINDS}")
        if kind != "intensity" and trunk is None:
            raise ValueError(f"{kind} needs a VGG16 trunk")
        self.kind, self.trunk, self.window = kind, trunk, window
        self.device = device or torch.device("cpu")
        self.dim = channels(kind, window)

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, points: np.ndarray, half: int, batch: int = 2048) -> torch.Tensor:
        """(n, S, S, C) float16 feature windows around ``points`` ((n, 2) 0-based pixel
        coordinates in ``rgb``, an (H, W, 3) uint8 image); window origins from
        :func:`window_origins`."""
        size = 2 * half + 1
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        origins = window_origins(points, half)
        out = torch.empty((len(points), size, size, self.dim), dtype=torch.float16)
        for start in range(0, len(points), batch):
            o = origins[start : start + batch]
            out[start : start + len(o)] = self._windows(image, o, size).to(torch.float16).cpu()
        return out

    def _windows(self, image: torch.Tensor, origins: np.ndarray, size: int) -> torch.Tensor:
        names = parts(self.kind)
        r = self.window // 2
        m = max(r if name == "intensity" else _MARGIN[name] for name in names)
        corner = origins - m
        # conv2_2 sees the image through pool1: crops start on even pixels, so that a scene point
        # gets the same pooling grid in every window that holds it
        odd = corner % 2 if "conv2_2" in names else np.zeros_like(corner)
        crops = _crops(image, corner - odd, size + 2 * m + 1).to(self.device).float()
        offset = torch.from_numpy(m + odd)  # window's top-left pixel within its crop
        out = []
        if "intensity" in names:
            luma = torch.tensor(LUMA, device=self.device)
            gray = torch.einsum("nchw,c->nhw", crops, luma)
            w = self.window
            # (n, y, x, dy, dx): grey level at (y + dy, x + dx) of the crop
            cols = gray.unfold(1, w, 1).unfold(2, w, 1)
            cols = _take(cols, offset - r, size).reshape(len(origins), size, size, w * w)
            out.append(_normalize(cols - cols.mean(dim=-1, keepdim=True)))
        if "conv1_2" in names or "conv2_2" in names:
            trunk = self.trunk
            assert trunk is not None
            x = torch.relu(trunk.convs["conv1_1"](trunk.normalize(crops)))
            c12 = torch.relu(trunk.convs["conv1_2"](x))
            if "conv1_2" in names:
                out.append(_normalize(_take(c12.permute(0, 2, 3, 1), offset, size)))
            if "conv2_2" in names:
                # pool1 cell k covers crop pixels 2k, 2k+1; bilinear upsampling with
                # align_corners=False puts its value back at their centre
                x = torch.relu(trunk.convs["conv2_1"](F.max_pool2d(c12, 2)))
                x = torch.relu(trunk.convs["conv2_2"](x))
                up = F.interpolate(x, scale_factor=2, mode="bilinear")
                out.append(_normalize(_take(up.permute(0, 2, 3, 1), offset, size)))
        return _normalize(torch.cat(out, dim=-1)) if len(out) > 1 else out[0]


def _take(maps: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size, ...) windows of (n, H, W, ...) maps, window i starting at pixel
    ``offset[i]`` (x, y)."""
    steps = torch.arange(size)
    rows = offset[:, 1, None] + steps[None]
    cols = offset[:, 0, None] + steps[None]
    index = torch.arange(len(maps))[:, None, None]
    return maps[index, rows[:, :, None], cols[:, None, :]]


def sample(windows: torch.Tensor, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear features and their derivatives at sub-pixel positions.

    Args:
        windows: (n, S, S, C) feature windows.
        local: (n, 2) positions (x, y) in window pixels (0 .. S - 1), clamped inside.

    Returns:
        f (n, C) and J (n, C, 2): df/dx and df/dy (exact derivatives of the bilinear
        interpolant, one-sided at the cell containing the point).
    """
    n, s, _, c = windows.shape
    xy = local.clamp(0, s - 1 - 1e-4)
    x0 = xy[:, 0].floor().long().clamp(max=s - 2)
    y0 = xy[:, 1].floor().long().clamp(max=s - 2)
    ax = (xy[:, 0] - x0)[:, None]
    ay = (xy[:, 1] - y0)[:, None]
    idx = torch.arange(n)
    f00 = windows[idx, y0, x0].float()
    f01 = windows[idx, y0, x0 + 1].float()
    f10 = windows[idx, y0 + 1, x0].float()
    f11 = windows[idx, y0 + 1, x0 + 1].float()
    top = f00 + ax * (f01 - f00)
    bottom = f10 + ax * (f11 - f10)
    f = top + ay * (bottom - top)
    dfdx = (1 - ay) * (f01 - f00) + ay * (f11 - f10)
    dfdy = bottom - top
    return f, torch.stack([dfdx, dfdy], dim=2)
