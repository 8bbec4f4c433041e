"""FTFY: find a close-up (the *target*) inside a wide image (the *source*) across large scale
differences, after Ha, Lin, Huang, Yan and Xu, "An End-to-end Deep Convolutional Neural Network
for a Multi-scale Image Matching and Localization Problem" (Brookhaven National Laboratory),
and its triplet sliding-window baseline.

Shared feature extractor (``w`` = the widths of a preset, BN and leaky ReLU after every
convolution, average pooling after conv 2, 5, 8 and 11)::

    conv1..conv11: 3x3/w1 3x3/w2 P  3x3/w3 1x1/w4 3x3/w5 P  3x3/w6 1x1/w7 3x3/w8 P
                   3x3/w9 1x1/w10 3x3/w11 P
    conv12: 3x3/w12 over [space-to-depth(conv5, 4), space-to-depth(conv8, 2), conv11]
    conv13: 1x1/w13                                       (stride 16: 128 -> 8x8, 256 -> 16x16)

Filter generator (a hypernetwork): a per-channel convolution over the whole 8x8 target map
(8x8 kernel, stride 8) gives one value per channel; a 1x1 convolution turns it into ``n_filters``
filters of 1x1xw13. Correlating them with the source map gives ``n_filters`` response maps
(``correlation="dot"``: raw dot products as in the authors' code, ``"cosine"``: as in the
paper), then batch norm and leaky ReLU.

Head: six convolutions (widths ``head``), then a 1x1 convolution and a sigmoid. Every cell of
the 16x16 source grid predicts :data:`BOXES_PER_CELL` boxes as (confidence, x, y, sqrt w,
sqrt h). x and y are the box centre within the cell, and w and h are fractions of the
source side. The paper's YOLO-v1 loss (:func:`yolo_loss`) or a softmax over the predictors
(:func:`softmax_loss`, the default of ``sfmkit train localize``) trains it.

Triplet baseline: the same extractor, then a fully connected layer to 128 values and L2
normalisation, applied to a 128x128 window.

Images enter as RGB in [0, 1] minus 0.5. Model files hold::

    {"format": 1, "kind": "ftfy" | "triplet", "version": NETWORK_VERSION, "arch": {...},
     "state": {...}, "card": {...}}

with weight kernels stored in float16 (:func:`save_network`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.models.files import load_state, read_model_file, save_model_file

#: Side of the target (close-up) the networks see.
TARGET_SIZE = 128
#: Side of the source (wide image tile) FTFY sees.
SOURCE_SIZE = 256
#: Total stride of the extractor.
STRIDE = 16
#: Boxes predicted per grid cell (B of YOLO v1).
BOXES_PER_CELL = 2
#: Values per box: confidence, x, y, sqrt w, sqrt h.
BOX_VALUES = 5
#: Weights of the YOLO-v1 loss terms (coordinates, object confidence, no-object confidence).
LOSS_WEIGHTS = {"coord": 5.0, "obj": 1.0, "noobj": 0.5}
#: Bumped whenever a network's computation changes, so old checkpoints are not resumed.
NETWORK_VERSION = 1
LEAK = 0.1
#: Initial bias of the confidence outputs (sigmoid(-4) = 0.018).
CONFIDENCE_PRIOR = -4.0


@dataclass(frozen=True)
class FTFYArch:
    """Widths of the networks.

    Attributes:
        extractor: output channels of conv1..conv13 (13 values).
        n_filters: filters made by the filter generator.
        head: output channels of the six head convolutions.
        embedding: output size of the triplet baseline's fully connected layer.
        correlation: ``dot`` (the authors' code) or ``cosine`` (the paper).
    """

    extractor: tuple[int, ...] = (32, 64, 128, 64, 128, 256, 128, 256, 512, 256, 512, 1024, 512)
    n_filters: int = 256
    head: tuple[int, ...] = (512, 256, 128, 256, 128, 256)
    embedding: int = 128
    correlation: str = "dot"

    def __post_init__(self) -> None:
        if len(self.extractor) != 13 or len(self.head) != 6 or min(self.extractor + self.head) < 1:
            raise ConfigError("an FTFY architecture has 13 extractor and 6 head widths, all >= 1")
        if self.n_filters < 1 or self.embedding < 1:
            raise ConfigError("n_filters and embedding must be >= 1")
        if self.correlation not in ("dot", "cosine"):
            raise ConfigError(f"correlation must be 'dot' or 'cosine', got {self.correlation!r}")


#: The paper's widths, and a quarter-width variant that trains on two CPU cores.
ARCHS: dict[str, FTFYArch] = {
    "paper": FTFYArch(),
    "small": FTFYArch(
        extractor=(8, 16, 32, 16, 32, 64, 32, 64, 128, 64, 128, 192, 128),
        n_filters=64,
        head=(128, 64, 32, 64, 32, 64),
        embedding=128,
    ),
}

#: (kernel, pool after) of conv1..conv11.
_LAYOUT = ((3, False), (3, True), (3, False), (1, False), (3, True), (3, False), (1, False), (3, True))
_LAYOUT += ((3, False), (1, False), (3, True))


def arch_from(name_or_dict: str | dict[str, Any] | FTFYArch) -> FTFYArch:
    """An architecture from a preset name, a stored dict or an :class:`FTFYArch`."""
    if isinstance(name_or_dict, FTFYArch):
        return name_or_dict
    if isinstance(name_or_dict, str):
        if name_or_dict not in ARCHS:
            raise ConfigError(f"unknown FTFY architecture {name_or_dict!r}; choose one of {sorted(ARCHS)}")
        return ARCHS[name_or_dict]
    d = dict(name_or_dict)
    return FTFYArch(
        **{**d, "extractor": tuple(d.get("extractor", ())), "head": tuple(d.get("head", ()))}  # type: ignore[arg-type]
    )


def _conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(LEAK, inplace=True),
    )


def to_input(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, h, w, 3) uint8 RGB -> (n, 3, h, w) float in [-0.5, 0.5]."""
    x = torch.from_numpy(np.require(images, np.uint8, ("C", "W"))).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)


class Extractor(nn.Module):
    """The shared 13-convolution extractor (stride 16)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers, cin = [], 3
        for (kernel, _), cout in zip(_LAYOUT, widths[:11], strict=True):
            layers.append(_conv(cin, cout, kernel))
            cin = cout
        self.convs = nn.ModuleList(layers)
        stacked = widths[4] * 16 + widths[7] * 4 + widths[10]
        self.conv12 = _conv(stacked, widths[11], 3)
        self.conv13 = _conv(widths[11], widths[12], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % STRIDE or x.shape[-2] % STRIDE:
            raise ValueError(f"input sides must be multiples of {STRIDE}, got {tuple(x.shape[-2:])}")
        kept = {}
        for i, ((_, pool), conv) in enumerate(zip(_LAYOUT, self.convs, strict=True)):
            x = conv(x)
            if pool:
                x = F.avg_pool2d(x, 2)
            if i in (4, 7):
                kept[i] = x
        x = torch.cat([F.pixel_unshuffle(kept[4], 4), F.pixel_unshuffle(kept[7], 2), x], dim=1)
        return self.conv13(self.conv12(x))


class FTFYNet(nn.Module):
    """Extractor, filter generator, correlation and YOLO head (see the module docs)."""

    def __init__(self, arch: FTFYArch | str | dict[str, Any] = "small") -> None:
        super().__init__()
        self.conf = arch_from(arch)
        c = self.conf.extractor[-1]
        cells = TARGET_SIZE // STRIDE
        self.extractor = Extractor(self.conf.extractor)
        self.squeeze = nn.Conv2d(c, c, cells, stride=cells, groups=c)
        self.generate = nn.Conv2d(c, self.conf.n_filters * c, 1)
        self.response = nn.Sequential(nn.BatchNorm2d(self.conf.n_filters), nn.LeakyReLU(LEAK, inplace=True))
        head, cin = [], self.conf.n_filters
        for cout, kernel in zip(self.conf.head, (3, 3, 1, 3, 1, 3), strict=True):
            head.append(_conv(cin, cout, kernel))
            cin = cout
        out = nn.Conv2d(cin, BOXES_PER_CELL * BOX_VALUES, 1)
        with torch.no_grad():  # start with confidences near 0.02: most cells hold no box
            out.bias.view(BOXES_PER_CELL, BOX_VALUES)[:, 0] = CONFIDENCE_PRIOR
        self.head = nn.Sequential(*head, out)

    def arch(self) -> dict[str, Any]:
        return asdict(self.conf)

    def filters(self, target: torch.Tensor) -> torch.Tensor:
        """(n, 3, 128, 128) targets -> (n, n_filters, C) filters."""
        if tuple(target.shape[-2:]) != (TARGET_SIZE, TARGET_SIZE):
            raise ValueError(f"targets must be {TARGET_SIZE}x{TARGET_SIZE}, got {tuple(target.shape[-2:])}")
        return self.target_filters(self.extractor(target))

    def correlate(self, filters: torch.Tensor, source_features: torch.Tensor) -> torch.Tensor:
        """Response maps (n, n_filters, h, w) of ``filters`` over the source features."""
        if self.conf.correlation == "cosine":
            filters = F.normalize(filters, dim=2)
            source_features = F.normalize(source_features, dim=1)
        return self.response(torch.einsum("nfc,nchw->nfhw", filters, source_features))

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Targets (n, 3, 128, 128) and sources (n, 3, H, W) -> (n, H/16, W/16, B, 5) in [0, 1]."""
        return self.predict(self.filters(target), self.extractor(source))

    def predict(self, filters: torch.Tensor, source_features: torch.Tensor) -> torch.Tensor:
        """The head on precomputed filters and source features (one target, many tiles: expand
        the filters to the tiles' batch)."""
        return torch.sigmoid(self.logits(filters, source_features))

    def logits(self, filters: torch.Tensor, source_features: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` before the sigmoid (what :func:`softmax_loss` trains)."""
        out = self.head(self.correlate(filters, source_features))
        n, _, h, w = out.shape
        return out.view(n, BOXES_PER_CELL, BOX_VALUES, h, w).permute(0, 3, 4, 1, 2)

    def target_filters(self, target_features: torch.Tensor) -> torch.Tensor:
        """:meth:`filters` from precomputed target features (n, C, 8, 8)."""
        generated = self.generate(self.squeeze(target_features))  # (n, F*C, 1, 1)
        return generated.view(len(target_features), self.conf.n_filters, -1)


class TripletNet(nn.Module):
    """Extractor + fully connected layer + L2 normalisation (128x128 window -> embedding)."""

    def __init__(self, arch: FTFYArch | str | dict[str, Any] = "small") -> None:
        super().__init__()
        self.conf = arch_from(arch)
        cells = TARGET_SIZE // STRIDE
        self.extractor = Extractor(self.conf.extractor)
        self.fc = nn.Linear(self.conf.extractor[-1] * cells * cells, self.conf.embedding)

    def arch(self) -> dict[str, Any]:
        return asdict(self.conf)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if tuple(windows.shape[-2:]) != (TARGET_SIZE, TARGET_SIZE):
            raise ValueError(f"windows must be {TARGET_SIZE}x{TARGET_SIZE}, got {tuple(windows.shape[-2:])}")
        return F.normalize(self.fc(self.extractor(windows).flatten(1)), dim=1)


NETWORKS: dict[str, type[nn.Module]] = {"ftfy": FTFYNet, "triplet": TripletNet}


# ---------------------------------------------------------------------------------- boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of boxes (..., 4) as (x0, y0, x1, y1)."""
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def grid_boxes(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (n, h, w, B, 5) -> boxes (n, h, w, B, 4) as fractions of the source side
    (x0, y0, x1, y1) and confidences (n, h, w, B)."""
    _, h, w, _, _ = pred.shape
    ys = torch.arange(h, device=pred.device, dtype=pred.dtype).view(1, h, 1, 1)
    xs = torch.arange(w, device=pred.device, dtype=pred.dtype).view(1, 1, w, 1)
    cx = (xs + pred[..., 1]) / w
    cy = (ys + pred[..., 2]) / h
    bw, bh = pred[..., 3] ** 2, pred[..., 4] ** 2
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
    return boxes, pred[..., 0]


def _responsible(pred: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For each sample, the cell (row, col) holding its box centre, the predictor ``best`` of
    that cell whose box overlaps it most, that overlap, and the coordinate error of the
    predictor (x, y within the cell and sqrt w, sqrt h; see :func:`yolo_loss`)."""
    n, h, w, _, _ = pred.shape
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    col = (centre[:, 0] * w).long().clamp(0, w - 1)
    row = (centre[:, 1] * h).long().clamp(0, h - 1)
    idx = torch.arange(n, device=pred.device)
    cell_boxes, _ = grid_boxes(pred)
    iou = box_iou(cell_boxes[idx, row, col], boxes[:, None, :]).detach()  # (n, B)
    best = iou.argmax(1)
    chosen = pred[idx, row, col, best]  # (n, 5)
    target_xy = torch.stack([centre[:, 0] * w - col, centre[:, 1] * h - row], dim=1)
    coord = ((chosen[:, 1:3] - target_xy) ** 2).sum(1) + ((chosen[:, 3:5] - size.sqrt()) ** 2).sum(1)
    return row, col, best, iou[idx, best], coord


def yolo_loss(pred: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The YOLO-v1 loss for one true box per sample (the paper's).

    Args:
        pred: (n, h, w, B, 5) network output.
        boxes: (n, 4) true boxes as fractions of the source side (x0, y0, x1, y1).

    The cell holding a box's centre is responsible for it, through the one of its B
    predictors whose box overlaps it most. That predictor's coordinates are pulled to the
    box (x, y within the cell, sqrt w, sqrt h), and its confidence to their IoU. Every other
    predictor's confidence is pulled to 0. The loss is summed per sample and averaged over
    the batch (:data:`LOSS_WEIGHTS`). The logged values are the terms and the mean IoU of
    the responsible predictor.
    """
    n, h, w, nb, _ = pred.shape
    row, col, best, best_iou, coord = _responsible(pred, boxes)
    idx = torch.arange(n, device=pred.device)
    obj = (pred[idx, row, col, best, 0] - best_iou) ** 2
    responsible = torch.zeros(n, h, w, nb, dtype=torch.bool, device=pred.device)
    responsible[idx, row, col, best] = True
    noobj = (pred[..., 0] ** 2).masked_fill(responsible, 0.0).flatten(1).sum(1)
    parts = {
        "coord": LOSS_WEIGHTS["coord"] * coord.mean(),
        "obj": LOSS_WEIGHTS["obj"] * obj.mean(),
        "noobj": LOSS_WEIGHTS["noobj"] * noobj.mean(),
    }
    loss = parts["coord"] + parts["obj"] + parts["noobj"]
    logged = {k: float(v.detach()) for k, v in parts.items()}
    logged["iou"] = float(best_iou.mean())
    return loss, logged


def softmax_loss(
    logits: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """A localisation loss that trains the confidences as one choice per sample.

    The coordinates are trained as in :func:`yolo_loss` (same responsible predictor, same
    weight). The confidence logits of all ``h * w * B`` predictors, plus a fixed background
    logit of 0, form one softmax, and its cross-entropy picks the responsible predictor, or
    the background for samples whose source does not hold the target (``present`` False).

    The YOLO confidence terms give each of the 512 predictors an independent squared error,
    and on two CPU cores they did not learn *where* the target is within the budget (the
    responsible predictor's confidence stayed near 0; ``benchmarks/README.md``); the softmax
    makes the cells compete directly. The fixed background logit keeps the confidences
    (``sigmoid(logit)``) comparable across tiles, which the search ranks them by.

    Args:
        logits: (n, h, w, B, 5) network output before the sigmoid (:meth:`FTFYNet.logits`).
        boxes: (n, 4) true boxes (fractions of the source side); ignored where not present.
        present: (n,) whether the source holds the target (default: all).
    """
    n = len(logits)
    present = torch.ones(n, dtype=torch.bool, device=logits.device) if present is None else present
    pred = torch.sigmoid(logits)
    conf = torch.cat([logits[..., 0].flatten(1), logits.new_zeros(n, 1)], dim=1)
    label = torch.full((n,), conf.shape[1] - 1, dtype=torch.long, device=logits.device)
    parts = {"coord": logits.new_zeros(())}
    logged = {"iou": float("nan")}
    if present.any():
        _, h, w, nb, _ = pred.shape
        row, col, best, best_iou, coord = _responsible(pred[present], boxes[present])
        label[present] = (row * w + col) * nb + best
        parts["coord"] = LOSS_WEIGHTS["coord"] * coord.sum() / n
        logged["iou"] = float(best_iou.mean())
    parts["choice"] = F.cross_entropy(conf, label)
    loss = parts["coord"] + parts["choice"]
    logged.update({k: float(v.detach()) for k, v in parts.items()})
    return loss, logged


#: The localisation losses ``sfmkit train localize --loss`` offers.
LOSSES = ("softmax", "yolo")


def decode(pred: torch.Tensor, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top_k`` most confident boxes of one prediction (h, w, B, 5): (k, 4) fractions of
    the source side and (k,) confidences, best first."""
    boxes, conf = grid_boxes(pred[None])
    boxes, conf = boxes.reshape(-1, 4), conf.reshape(-1)
    order = conf.argsort(descending=True)[:top_k]
    return boxes[order].cpu().numpy(), conf[order].cpu().numpy()


# ---------------------------------------------------------------------------------- files


def save_network(path: Path, kind: str, net: nn.Module, card: dict[str, Any]) -> Path:
    """Write a model file (see the module docs), atomically."""
    state = {k: _stored(v) for k, v in net.state_dict().items()}
    return save_model_file(path, kind, NETWORK_VERSION, net, card, state)


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """Weight matrices and kernels are stored in float16 (half the file; inference is unchanged to
    about 1e-3 relative); biases and batch-norm statistics stay float32."""
    tensor = tensor.detach().cpu().clone()
    return tensor.half() if tensor.is_floating_point() and tensor.ndim > 1 else tensor


def load_network(kind: str, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The ``kind`` network (eval mode) and its card from a ``.pt`` file made by ``sfmkit train
    localize|localize-triplet``."""
    if kind not in NETWORKS:
        raise SfmkitError(f"unknown network kind {kind!r}")
    path = Path(path)
    command = "sfmkit train " + ("localize" if kind == "ftfy" else "localize-triplet")
    if not path.is_file():
        raise SfmkitError(f"{kind} weights {path} do not exist; train them with '{command}'")
    payload = read_model_file(path, kind, NETWORK_VERSION, command)
    net = NETWORKS[kind](payload["arch"])
    load_state(net, payload["state"], path, kind)
    return net.eval(), {"source": str(path), **dict(payload.get("card", {}))}
