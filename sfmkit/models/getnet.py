"""GetNet: learned pair verification with a spatial transformer in front of a Siamese network,
after Yu et al., "GetNet: Get Target Area for Image Pairing".

For each image of a pair a localisation network predicts ``(s, t_x, t_y)``, the affine map
``A = [[s, 0, t_x], [0, s, t_y]]`` of normalised coordinates (``[-1, 1]``, as in
``torch.nn.functional.affine_grid``). Bilinear sampling through ``A`` crops the image to a
``crop`` x ``crop`` window, the *target area*; a Siamese CNN with shared weights embeds both
crops, and the distance ``d = ||a - b||`` between the unit embeddings decides "same surface"
(``d`` below a threshold). The contrastive loss of Hadsell, Chopra and LeCun trains it:
``L = 1/(2N) sum[y d^2 + (1 - y) max(m - d, 0)^2]``.

Choices the paper leaves open, made here (recorded in every model file's ``arch``):

- The localisation network sees the pair, so the window of image A can depend on what B shows
  (the common region of two scene photos is a property of the pair, not of one image): its
  own image stacked (channels) with the other one, or a map of where the other image's
  features appear (``pairing``, :class:`Localisation`). It is applied to (A, B) and to (B, A)
  with shared weights. Its last layer starts at zero with bias (1, 0, 0): the transformer
  starts at the identity and the first crops are the whole images.
- ``s`` and ``t`` are not clamped during training (as in Jaderberg et al.'s spatial
  transformers; samples outside the image read zeros); :func:`regions` clips the reported
  window to the image.
- Embeddings are L2-normalised, so ``d`` lies in ``[0, 2]``; the margin is 1 by default.
- The plain Siamese baseline (``stn=False``) is the same network with the transformer fixed
  at the identity: both see the whole image resampled to ``crop`` x ``crop``.

Images enter as ``(n, channels, size, size)`` floats in ``[-0.5, 0.5]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sfmkit.errors import ConfigError
from sfmkit.models.files import load_state, read_model_file, save_model_file
from sfmkit.utils.progress import track

KIND = "getnet"
#: Bumped whenever the computation changes, so old checkpoints are not resumed.
NETWORK_VERSION = 1
RETRAIN = "sfmkit train pair-verify"
#: The localisation network pools its last map to this grid (not to one cell: where the
#: content is must reach the fully connected layers that predict the window).
LOCALISATION_GRID = 4


@dataclass(frozen=True)
class GetNetArch:
    """Shape of the network.

    Attributes:
        channels: image channels (1 for the digits protocol, 3 for photos).
        size: side of the (square) input images.
        crop: side of the window the transformer samples (and the Siamese network sees).
        siamese: output channels of the Siamese convolution blocks (each conv, BN, ReLU, 2x2 pool).
        embedding: size of the unit embedding.
        localisation: output channels of the localisation network's blocks.
        pairing: how the localisation network sees the other image: ``stack`` (channels) or
            ``correlation`` (a map of where the other image's features appear; see
            :class:`Localisation`).
        stn: with the spatial transformer (GetNet), or without (the plain Siamese baseline).
    """

    channels: int = 3
    size: int = 128
    crop: int = 96
    siamese: tuple[int, ...] = (32, 64, 128, 128)
    embedding: int = 64
    localisation: tuple[int, ...] = (16, 32, 64)
    pairing: str = "stack"
    stn: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"GetNet takes 1 or 3 channels, got {self.channels}")
        if self.pairing not in ("stack", "correlation"):
            raise ConfigError(f"GetNet pairing is stack or correlation, got {self.pairing!r}")
        if not self.siamese or not self.localisation or self.embedding < 1:
            raise ConfigError("GetNet needs at least one Siamese and one localisation block")
        if self.crop < 2 ** len(self.siamese) or self.size < 2 ** len(self.localisation):
            raise ConfigError(
                f"GetNet's crop {self.crop} / size {self.size} is too small for its "
                f"{len(self.siamese)} / {len(self.localisation)} pooling blocks"
            )


#: Presets: ``digits`` for the 60x60 digits protocol, ``scenes`` for photos.
ARCHS = {
    "digits": GetNetArch(channels=1, size=60, crop=32, siamese=(32, 64, 64), embedding=32),
    "scenes": GetNetArch(crop=64, siamese=(16, 32, 64, 64), embedding=64, localisation=(8, 16, 32)),
}


def arch_from(value: str | dict[str, Any] | GetNetArch, **changes: Any) -> GetNetArch:
    """An architecture from a preset name, a stored dict or a :class:`GetNetArch`, with ``changes``."""
    if isinstance(value, str):
        if value not in ARCHS:
            raise ConfigError(f"unknown GetNet architecture {value!r}; choose one of {sorted(ARCHS)}")
        d = asdict(ARCHS[value])
    elif isinstance(value, GetNetArch):
        d = asdict(value)
    else:
        d = dict(value)
    d.update(changes)
    d["siamese"] = tuple(d["siamese"])
    d["localisation"] = tuple(d["localisation"])
    return GetNetArch(**d)


def _blocks(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers)


class Localisation(nn.Module):
    """The spatial transformer's localisation network: (own image, other image) -> (s, t_x, t_y).

    ``pairing="stack"``: one CNN over the two images stacked as channels. ``"correlation"``: one
    CNN over each image (shared weights); every cell of the image's map gets the best cosine
    similarity to any cell of the other's map, a map of where the other image's content
    appears; that map and the features go through one more convolution.
    """

    def __init__(self, arch: GetNetArch) -> None:
        super().__init__()
        self.pairing = arch.pairing
        width = arch.localisation[-1]
        if arch.pairing == "stack":
            self.features = _blocks(2 * arch.channels, arch.localisation)
        else:
            self.features = _blocks(arch.channels, arch.localisation)
            self.mix = nn.Sequential(
                nn.Conv2d(width + 2, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        cells = LOCALISATION_GRID**2
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * cells, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 3),
        )
        nn.init.zeros_(self.fc[-1].weight)
        with torch.no_grad():
            self.fc[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))

    def forward(self, image: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.pairing == "stack":
            x = self.features(torch.cat([image, other], dim=1))
        else:
            x = self.features(image)
            fa = F.normalize(x.flatten(2), dim=1)  # (n, c, hw)
            fb = F.normalize(self.features(other).flatten(2), dim=1)
            sim = torch.einsum("nci,ncj->nij", fa, fb)  # (n, hw_a, hw_b)
            h, w = x.shape[-2:]
            best = sim.max(dim=2).values.view(-1, 1, h, w)
            mean = sim.mean(dim=2).view(-1, 1, h, w)
            x = self.mix(torch.cat([x, best, mean], dim=1))
        return self.fc(F.adaptive_avg_pool2d(x, LOCALISATION_GRID))


class Siamese(nn.Module):
    """The shared embedding network: a window -> a unit vector."""

    def __init__(self, arch: GetNetArch) -> None:
        super().__init__()
        self.features = _blocks(arch.channels, arch.siamese)
        self.fc = nn.Linear(arch.siamese[-1], arch.embedding)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(window), 1).flatten(1)
        return F.normalize(self.fc(x), dim=1)


def affine(params: torch.Tensor) -> torch.Tensor:
    """(n, 3) values (s, t_x, t_y) -> (n, 2, 3) matrices [[s, 0, t_x], [0, s, t_y]]."""
    s, tx, ty = params.unbind(1)
    zero = torch.zeros_like(s)
    return torch.stack([torch.stack([s, zero, tx], 1), torch.stack([zero, s, ty], 1)], 1)


class GetNet(nn.Module):
    """The spatial transformer (optional) and the Siamese network."""

    def __init__(self, arch: GetNetArch) -> None:
        super().__init__()
        self.conf = arch
        self.siamese = Siamese(arch)
        self.localisation = Localisation(arch) if arch.stn else None

    def arch(self) -> dict[str, Any]:
        return asdict(self.conf)

    def transforms(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, t_x, t_y) of each image of the pairs; the identity without a transformer."""
        if self.localisation is None:
            ident = torch.tensor([1.0, 0.0, 0.0], device=a.device).expand(a.shape[0], 3)
            return ident, ident
        return self.localisation(a, b), self.localisation(b, a)

    def crop(self, image: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Bilinear sampling of the window ``params`` describes, ``crop`` x ``crop``."""
        n, c = image.shape[:2]
        grid = F.affine_grid(affine(params), [n, c, self.conf.crop, self.conf.crop], align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pairs of images -> ``distance`` (n,), embeddings ``ea``/``eb`` and transforms ``ta``/``tb``."""
        for x in (a, b):
            if x.ndim != 4 or tuple(x.shape[1:]) != (self.conf.channels, self.conf.size, self.conf.size):
                raise ValueError(
                    f"GetNet expects (n, {self.conf.channels}, {self.conf.size}, {self.conf.size}) "
                    f"images, got {tuple(x.shape)}"
                )
        ta, tb = self.transforms(a, b)
        ea = self.siamese(self.crop(a, ta))
        eb = self.siamese(self.crop(b, tb))
        return {"distance": (ea - eb).norm(dim=1), "ea": ea, "eb": eb, "ta": ta, "tb": tb}


def contrastive_loss(distance: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """``1/(2N) sum[y d^2 + (1 - y) max(m - d, 0)^2]`` (``same`` is y, 1 for a matching pair)."""
    y = same.float()
    return 0.5 * (y * distance.pow(2) + (1 - y) * (margin - distance).clamp(min=0).pow(2)).mean()


def regions(params: torch.Tensor | np.ndarray) -> np.ndarray:
    """Windows (n, 4) as (x0, y0, x1, y1) fractions of the image side, clipped to [0, 1]."""
    p = params.detach().cpu().numpy() if isinstance(params, torch.Tensor) else np.asarray(params)
    s, tx, ty = np.abs(p[:, 0]), p[:, 1], p[:, 2]
    # normalised x_in = s * x_out + t_x for x_out in [-1, 1]; fraction = (x_in + 1) / 2
    boxes = np.stack([(tx - s + 1) / 2, (ty - s + 1) / 2, (tx + s + 1) / 2, (ty + s + 1) / 2], axis=1)
    return np.clip(boxes, 0.0, 1.0)


def predict_pairs(
    net: GetNet, images: np.ndarray, pairs: np.ndarray, batch: int = 128, label: str = "pairs"
) -> dict[str, np.ndarray]:
    """Inference on index ``pairs`` (M, 2) into ``images`` (N, C, S, S) uint8, in batches:
    ``distance`` (M,) and the windows ``region_a``, ``region_b`` (M, 4) as fractions."""
    net.eval()
    dev = next(net.parameters()).device
    dist, ra, rb = [], [], []
    with torch.inference_mode():
        for k in track(range(0, len(pairs), batch), label):
            idx = pairs[k : k + batch]
            out = net(to_input(images[idx[:, 0]], dev), to_input(images[idx[:, 1]], dev))
            dist.append(out["distance"].cpu().numpy())
            ra.append(regions(out["ta"]))
            rb.append(regions(out["tb"]))
    if not dist:
        return {
            "distance": np.zeros(0, np.float32),
            "region_a": np.zeros((0, 4)),
            "region_b": np.zeros((0, 4)),
        }
    return {"distance": np.concatenate(dist), "region_a": np.concatenate(ra), "region_b": np.concatenate(rb)}


def to_input(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, channels, size, size) uint8 -> float in [-0.5, 0.5]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0).sub_(0.5)


def shipped_state(net: GetNet, half: bool = False) -> dict[str, torch.Tensor]:
    """The state as a model file keeps it: weight kernels rounded to float16 (stored as float16
    with ``half``, else widened back to float32), everything else as is."""

    def rounded(v: torch.Tensor) -> torch.Tensor:
        return v.half() if half else v.half().float()

    return {k: rounded(v) if v.is_floating_point() and v.ndim > 1 else v for k, v in net.state_dict().items()}


def save_getnet(path: Path, net: GetNet, card: dict[str, Any]) -> Path:
    """Write a model file; weight kernels stored in float16 (the file stays small)."""
    return save_model_file(Path(path), KIND, NETWORK_VERSION, net, card, shipped_state(net, half=True))


def load_getnet(path: Path) -> tuple[GetNet, dict[str, Any]]:
    """A trained GetNet (or plain Siamese) and its model card."""
    payload = read_model_file(Path(path), KIND, NETWORK_VERSION, RETRAIN)
    net = GetNet(arch_from(payload["arch"]))
    load_state(net, payload["state"], Path(path), KIND)
    net.eval()
    return net, payload["card"]
