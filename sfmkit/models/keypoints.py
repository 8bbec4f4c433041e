"""Learned multiscale keypoints (detector) and triplet descriptors, after Altwaijry, Veit and
Belongie, "Learning to Detect and Match Keypoints with Deep Architectures" (BMVC 2016).

Both networks take grayscale input scaled to [0, 1] and use no padding.

Detector (Table 1 of the paper)::

    trunk:     C3/128/2-BN-P3/2-C3/128/1-BN-P3/2-C3/d/1          (stride 8)
    recursion: {C3/d/1-BN}, one block with shared weights, applied r times
    head:      C3/64/1-BN-C1/1/1                                  (one score per position)

A patch of side S in :data:`PATCH_SIZES` takes the branch with ``r = RECURSIONS[S]``
recursions: every branch then reaches a 4 x 4 map, the head leaves 2 x 2 scores around the
patch centre and the patch score is their mean (the smallest map the 3 x 3 head can score
without padding; our reading of "recursing until 1 x 1"). On a whole image the trunk runs
once and the head scores the map after every recursion: level ``r`` is a score map for
patches of side ``64 + 16 r`` on a grid of 8 pixels (:func:`level_to_pixels`).

Descriptor ("Triplet-1")::

    C3/128/2-BN-P3/2-C3/256/1-BN-P3/2-C3/256/1-BN-P3/2-L2Normalize   (64 x 64 -> 256-D)

ReLU follows every batch normalisation (the table lists only BN). Model files hold the state
dict (float32), the architecture options and a model card::

    {"format": 1, "kind": "detector" | "descriptor", "arch": {...}, "state": {...}, "card": {...}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sfmkit.errors import SfmkitError
from sfmkit.models.files import load_state, read_model_file, save_model_file

logger = logging.getLogger(__name__)

#: Discrete patch sides (pixels) of the training data and of the detector's branches.
PATCH_SIZES: tuple[int, ...] = (64, 96, 128, 192, 256)
#: Recursions of the shared block for each patch side (each adds 16 px of receptive field).
RECURSIONS: dict[int, int] = {s: (s - 64) // 16 for s in PATCH_SIZES}
#: Side of the descriptor network's input.
DESCRIPTOR_INPUT = 64
#: Bumped whenever a network's computation changes, so old checkpoints are not resumed.
NETWORK_VERSION = 2
DATA = Path(__file__).parent / "data"
#: Weights trained by ``sfmkit train keypoints`` / ``sfmkit train descriptor`` (see the cards).
SHIPPED = {"detector": DATA / "multiscale-kp-detector.pt", "descriptor": DATA / "multiscale-kp-descriptor.pt"}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def to_input(patches: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, S, S) uint8 patches -> (n, 1, S, S) float in [0, 1], the networks' input."""
    return torch.from_numpy(np.ascontiguousarray(patches)).to(device)[:, None].float() / 255.0


def crop_patches(gray: torch.Tensor, centres: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) uint8 crops of a (H, W) float image around sub-pixel ``centres``
    (0-based pixel coordinates), bilinear, without resizing."""
    if len(centres) == 0:
        return np.zeros((0, size, size), np.uint8)
    h, w = gray.shape
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    out = []
    for chunk in np.array_split(np.asarray(centres, np.float32), max(1, len(centres) // 256)):
        c = torch.from_numpy(chunk)
        xs = c[:, 0, None, None] + offsets[None, None, :]
        ys = c[:, 1, None, None] + offsets[None, :, None]
        grid = torch.stack([xs.expand(-1, size, size), ys.expand(-1, size, size)], -1)
        grid = torch.stack([grid[..., 0] * 2 / (w - 1) - 1, grid[..., 1] * 2 / (h - 1) - 1], -1)
        src = gray[None, None].expand(len(chunk), 1, h, w)
        sampled = F.grid_sample(src, grid, mode="bilinear", align_corners=True)
        out.append(sampled[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


@torch.inference_mode()
def describe_patches(net: nn.Module, patches: np.ndarray, device: torch.device) -> np.ndarray:
    """(n, D) descriptors of (n, 64, 64) uint8 patches, in chunks of about 512."""
    out = [np.zeros((0, getattr(net, "dim", 256)), np.float32)]
    for chunk in np.array_split(patches, max(1, len(patches) // 512)):
        out.append(net(to_input(chunk, device)).cpu().numpy())
    return np.concatenate(out)


def level_to_pixels(index: np.ndarray | torch.Tensor, level: int) -> np.ndarray | torch.Tensor:
    """Pixel coordinate (0-based, pixel centres at integers) of the receptive-field centre of
    head output ``index`` at recursion ``level``: the trunk maps index ``t`` to ``8 t + 19``
    and every unpadded 3 x 3 layer after it shifts the index by one."""
    return 8 * (index + level + 1) + 19


class MultiscaleDetector(nn.Module):
    """Keypoint scoring network with a recursive block shared across scales."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.trunk = nn.Sequential(
            _conv_bn(1, 128, 2),
            nn.MaxPool2d(3, 2),
            _conv_bn(128, 128),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(128, width, 3),
        )
        self.recursive = _conv_bn(width, width)
        self.head = nn.Sequential(_conv_bn(width, 64), nn.Conv2d(64, 1, 1))

    def arch(self) -> dict[str, Any]:
        return {"width": self.width}

    def forward(self, patches: torch.Tensor, size: int) -> torch.Tensor:
        """Scores (B,) of (B, 1, size, size) patches through the branch of ``size``."""
        if size not in RECURSIONS or patches.shape[-1] != size or patches.shape[-2] != size:
            raise ValueError(
                f"patches must be square with a side in {PATCH_SIZES}, got {tuple(patches.shape)}"
            )
        x = self.trunk(patches)
        for _ in range(RECURSIONS[size]):
            x = self.recursive(x)
        return self.head(x).mean(dim=(1, 2, 3))

    def score_maps(self, image: torch.Tensor, levels: list[int]) -> dict[int, torch.Tensor]:
        """Score maps (h_r, w_r) of a (1, 1, H, W) image after each recursion count in
        ``levels`` (ascending); levels whose map would be empty are left out."""
        return self.head_maps(self.trunk(image), levels)

    def head_maps(self, x: torch.Tensor, levels: list[int]) -> dict[int, torch.Tensor]:
        """:meth:`score_maps` from the trunk's output ``x`` (1, d, h, w)."""
        out: dict[int, torch.Tensor] = {}
        for r in range(max(levels) + 1):
            if r > 0:
                if min(x.shape[-2:]) < 3:
                    break
                x = self.recursive(x)
            if r in levels and min(x.shape[-2:]) >= 3:
                out[r] = self.head(x)[0, 0]
        return out


class TripletDescriptor(nn.Module):
    """The "Triplet-1" patch descriptor: 64 x 64 grayscale patches to unit 256-D vectors."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(
            _conv_bn(1, 128, 2),
            nn.MaxPool2d(3, 2),
            _conv_bn(128, 256),
            nn.MaxPool2d(3, 2),
            _conv_bn(256, dim),
            nn.MaxPool2d(3, 2),
        )

    def arch(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, 1, 64, 64) -> (B, dim) unit vectors. Each patch is first standardised (zero
        mean, unit deviation), so the descriptor ignores affine changes of brightness."""
        if patches.shape[-2:] != (DESCRIPTOR_INPUT, DESCRIPTOR_INPUT):
            raise ValueError(f"descriptor patches must be {DESCRIPTOR_INPUT} x {DESCRIPTOR_INPUT}")
        mean = patches.mean(dim=(1, 2, 3), keepdim=True)
        std = patches.std(dim=(1, 2, 3), keepdim=True)
        return F.normalize(self.net((patches - mean) / (std + 1e-2)).flatten(1), dim=1)


NETWORKS: dict[str, type[nn.Module]] = {"detector": MultiscaleDetector, "descriptor": TripletDescriptor}


def save_network(path: Path, kind: str, net: nn.Module, card: dict[str, Any]) -> Path:
    """Write a model file (see the module docs), atomically."""
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return save_model_file(path, kind, NETWORK_VERSION, net, card, state)


def load_network(kind: str, source: str = "default") -> tuple[nn.Module, dict[str, Any]]:
    """The ``kind`` network (eval mode) and its card from ``source``: ``default`` (the shipped
    file), ``random`` (untrained, seeded) or a ``.pt`` file made by ``sfmkit train``."""
    if kind not in NETWORKS:
        raise SfmkitError(f"unknown network kind {kind!r}")
    if source == "random":
        torch.manual_seed(0)
        return NETWORKS[kind]().eval(), {"source": "random"}
    path = SHIPPED[kind] if source == "default" else Path(source)
    if not path.is_file():
        hint = (
            "train one with 'sfmkit train keypoints|descriptor'"
            if source != "default"
            else "reinstall sfmkit"
        )
        raise SfmkitError(f"{kind} weights {path} do not exist; {hint}")
    payload = read_model_file(path, kind, NETWORK_VERSION, "sfmkit train keypoints|descriptor")
    net = NETWORKS[kind](**payload.get("arch", {}))
    load_state(net, payload["state"], path, kind)
    return net.eval(), {"source": str(path), **dict(payload.get("card", {}))}
