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
                 (the default, and the weight-free ablation).

Only the windows are computed, never the whole image at full resolution, so the cost is
proportional to the number of keypoints and memory stays bounded. Two stores, one interface
(``sample``, indexing, assignment): :class:`DenseWindows` holds the (n, S, S, C) features of the
VGG kinds; :class:`PatchWindows` holds an ``intensity`` window as its grey crop plus the mean and
inverse norm of every pixel's patch, and forms the C = w * w features only where they are
sampled: 12x less memory than the dense store for w = 7, and no per-pixel patches to build.

:func:`sample` evaluates features and their exact bilinear derivatives at sub-pixel positions.
"""

from __future__ import annotations

from typing import Any

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


def _corners(local: torch.Tensor, s: int) -> tuple[torch.Tensor, ...]:
    """Top-left cell (x0, y0) of the bilinear interpolation at ``local`` (n, 2) in an S x S
    window (clamped inside), and the weights (ax, ay) as (n, 1) columns."""
    xy = local.clamp(0, s - 1 - 1e-4)
    x0 = xy[:, 0].floor().long().clamp(max=s - 2)
    y0 = xy[:, 1].floor().long().clamp(max=s - 2)
    return x0, y0, (xy[:, 0] - x0)[:, None], (xy[:, 1] - y0)[:, None]


def _bilinear(
    f00: torch.Tensor,
    f01: torch.Tensor,
    f10: torch.Tensor,
    f11: torch.Tensor,
    ax: torch.Tensor,
    ay: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear value (n, C) and derivatives (n, C, 2) from the four corner features (fyx)."""
    top = f00 + ax * (f01 - f00)
    bottom = f10 + ax * (f11 - f10)
    dfdx = (1 - ay) * (f01 - f00) + ay * (f11 - f10)
    return top + ay * (bottom - top), torch.stack([dfdx, bottom - top], dim=2)


class DenseWindows:
    """(n, S, S, C) feature windows, stored as they are (the VGG kinds)."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    @property
    def size(self) -> int:
        return int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory of the stored windows."""
        return self.data.nelement() * self.data.element_size()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Any) -> DenseWindows:
        return DenseWindows(self.data[index])

    def __setitem__(self, index: Any, value: DenseWindows) -> None:
        self.data[index] = value.data

    def dense(self) -> torch.Tensor:
        """(n, S, S, C) float32 features."""
        return self.data.float()

    def sample(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`sample`."""
        return sample(self.data, local)


class PatchWindows:
    """``intensity`` windows stored as what defines them: for each of n keypoints the grey crop
    (n, S + w - 1, S + w - 1) under its S x S window (w: the patch side), and per window pixel
    the mean and the inverse L2 norm of its zero-mean w x w patch (n, S, S). The feature of
    window pixel (y, x) is ``(crop[y:y+w, x:x+w] - mean[y, x]) * inv[y, x]``, flattened."""

    def __init__(self, gray: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor, w: int) -> None:
        self.gray, self.mean, self.inv, self.w = gray, mean, inv, w

    @classmethod
    def empty(cls, n: int, size: int, w: int) -> PatchWindows:
        crop = size + w - 1
        return cls(torch.zeros(n, crop, crop), torch.zeros(n, size, size), torch.zeros(n, size, size), w)

    @property
    def size(self) -> int:
        return int(self.mean.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory of the stored windows."""
        return sum(t.nelement() * t.element_size() for t in (self.gray, self.mean, self.inv))

    def __len__(self) -> int:
        return len(self.gray)

    def __getitem__(self, index: Any) -> PatchWindows:
        return PatchWindows(self.gray[index], self.mean[index], self.inv[index], self.w)

    def __setitem__(self, index: Any, value: PatchWindows) -> None:
        self.gray[index], self.mean[index], self.inv[index] = value.gray, value.mean, value.inv

    def dense(self) -> torch.Tensor:
        """(n, S, S, w * w) float32 features, as :class:`DenseWindows` would hold them."""
        w, s = self.w, self.size
        patches = self.gray.unfold(1, w, 1).unfold(2, w, 1).reshape(len(self), s, s, w * w)
        return (patches - self.mean[..., None]) * self.inv[..., None]

    def sample(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`sample`: the four corner patches come from one (w + 1)^2 block of the
        grey crop per keypoint."""
        n, s, w = len(self), self.size, self.w
        x0, y0, ax, ay = _corners(local, s)
        crop = self.gray.shape[1]
        steps = torch.arange(w + 1)
        index = ((y0[:, None] + steps)[:, :, None] * crop + (x0[:, None] + steps)[:, None, :]).reshape(n, -1)
        block = torch.gather(self.gray.reshape(n, -1), 1, index).view(n, w + 1, w + 1)
        flat = (self.mean.reshape(n, -1), self.inv.reshape(n, -1))
        corners = []
        for dy in (0, 1):
            for dx in (0, 1):
                cell = ((y0 + dy) * s + x0 + dx)[:, None]
                mean, inv = (torch.gather(m, 1, cell) for m in flat)
                corners.append((block[:, dy : dy + w, dx : dx + w].reshape(n, w * w) - mean) * inv)
        return _bilinear(*corners, ax, ay)


Windows = DenseWindows | PatchWindows


def concat(parts: list[Windows]) -> Windows:
    """The windows of several stores of one kind, in order."""
    first = parts[0]
    if isinstance(first, DenseWindows):
        return DenseWindows(torch.cat([p.data for p in parts]))  # type: ignore[union-attr]
    fields = ("gray", "mean", "inv")
    return PatchWindows(*(torch.cat([getattr(p, f) for p in parts]) for f in fields), first.w)


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

    def empty(self, n: int, half: int) -> Windows:
        """A store for ``n`` windows of side ``2 * half + 1`` (filled by assignment)."""
        size = 2 * half + 1
        if self.kind == "intensity":
            return PatchWindows.empty(n, size, self.window)
        return DenseWindows(torch.zeros((n, size, size, self.dim), dtype=torch.float16))

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, points: np.ndarray, half: int, batch: int = 2048) -> Windows:
        """The feature windows around ``points`` ((n, 2) 0-based pixel coordinates in ``rgb``,
        an (H, W, 3) uint8 image); window origins from :func:`window_origins`. VGG features are
        stored as float16."""
        size = 2 * half + 1
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        origins = window_origins(points, half)
        out = self.empty(len(points), half)
        for start in range(0, len(points), batch):
            o = origins[start : start + batch]
            out[start : start + len(o)] = self._windows(image, o, size)
        return out

    def _patches(self, image: torch.Tensor, origins: np.ndarray, size: int) -> PatchWindows:
        w = self.window
        crops = _crops(image, origins - w // 2, size + w - 1).to(self.device).float()
        gray = torch.einsum("nchw,c->nhw", crops, torch.tensor(LUMA, device=self.device))
        # per-pixel patch mean and norm by box filters, in float64: E[g^2] - E[g]^2 cancels
        g = gray.double()[:, None]
        mean = F.avg_pool2d(g, w, stride=1)
        var = (F.avg_pool2d(g * g, w, stride=1) - mean * mean).clamp_min(0)
        inv = 1.0 / (var * (w * w)).sqrt().clamp_min(1e-6)
        return PatchWindows(gray.cpu(), mean[:, 0].float().cpu(), inv[:, 0].float().cpu(), w)

    def _windows(self, image: torch.Tensor, origins: np.ndarray, size: int) -> Windows:
        if self.kind == "intensity":
            return self._patches(image, origins, size)
        return DenseWindows(self._dense(image, origins, size).to(torch.float16).cpu())

    def _dense(self, image: torch.Tensor, origins: np.ndarray, size: int) -> torch.Tensor:
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
    x0, y0, ax, ay = _corners(local, windows.shape[1])
    idx = torch.arange(len(windows))
    corners = [windows[idx, y0 + dy, x0 + dx].float() for dy in (0, 1) for dx in (0, 1)]
    return _bilinear(*corners, ax, ay)
