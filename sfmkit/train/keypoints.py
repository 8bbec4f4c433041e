"""``sfmkit train keypoints`` and ``sfmkit train descriptor``: the multiscale detector and the
triplet descriptor of :mod:`sfmkit.models.keypoints`, trained on ``build-patches`` files.

Detector, one step: a patch side S is drawn (probability proportional to the square root of
the number of positives of that side, so the rare large sides are seen often enough), then
``batch/2`` centred positives, ``batch/2`` jittered copies and the ``batch/2`` highest-scoring
of ``negative_pool x batch/2`` negatives (hard-negative mining from the first step; positives
and mined negatives 1:1). Loss, with scores x, labels y in {+1, -1} and shape targets h::

    lambda * mean(hinge(1 - y x)) over positives and negatives
    + (1 - lambda) * mean((x - h)^2) over positives (h = 1), jittered copies and negatives (h = 0)

    h = exp(-|v| / (2 sigma^2)),  v = keypoint offset from the patch centre / S

Descriptor, one step: ``batch`` points, two views each (the patches resized to 64 x 64 with
antialiasing), triplet margin loss on L2 distances with the hardest negative in the batch
(any view of another point). SGD lr 0.01, momentum 0.9, weight decay 0.005 (the paper's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.patches import PatchSet, read_patches
from sfmkit.models.keypoints import (
    DESCRIPTOR_INPUT,
    NETWORK_VERSION,
    PATCH_SIZES,
    MultiscaleDetector,
    TripletDescriptor,
    save_network,
    to_input,
)
from sfmkit.train.loop import LoopState, model_card, run_training, start_training, write_history

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainDetectorConf:
    """Attributes:
    width: d, channels of the recursive block.
    batch: patches per step (half positives, half mined negatives, plus as many jittered).
    negative_pool: candidate negatives scored per kept negative (hard-negative mining).
    hinge_weight: lambda of the loss.
    shape_sigma: sigma of the shape target, in units of the patch side.
    """

    width: int = 64
    batch: int = 32
    negative_pool: int = 3
    hinge_weight: float = 0.5
    shape_sigma: float = 0.2
    steps: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.batch < 4 or self.batch % 2 or self.negative_pool < 1 or not 0 <= self.hinge_weight <= 1:
            raise ConfigError(
                "detector training needs an even batch >= 4, negative_pool >= 1, hinge_weight in [0, 1]"
            )


@dataclass(frozen=True)
class TrainDescriptorConf:
    """Attributes:
    batch: points per step (two views each; negatives are the other points' views).
    margin: triplet margin on L2 distances of unit vectors.
    """

    dim: int = 256
    batch: int = 64
    margin: float = 0.2
    steps: int = 1000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.005
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.batch < 2 or self.margin <= 0:
            raise ConfigError("descriptor training needs batch >= 2 and margin > 0")


def resize_patches(patches: np.ndarray, size: int = DESCRIPTOR_INPUT) -> np.ndarray:
    """(n, S, S) uint8 -> (n, size, size) uint8, bilinear with antialiasing."""
    if patches.shape[-1] == size:
        return patches
    out = []
    for chunk in np.array_split(patches, max(1, len(patches) // 512)):
        x = torch.from_numpy(chunk)[:, None].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size), np.uint8)


# ---------------------------------------------------------------------------------- detector


@dataclass
class DetectorData:
    """Patches per side: positives, jittered copies (+ offsets) and negatives."""

    positives: dict[int, np.ndarray]
    jittered: dict[int, np.ndarray]
    offsets: dict[int, np.ndarray]
    negatives: dict[int, np.ndarray]

    @classmethod
    def from_sets(cls, sets: list[PatchSet]) -> DetectorData:
        def gather(table: str, size: int, column: str | None = None) -> np.ndarray:
            parts = []
            for s in sets:
                t = getattr(s, table)
                if "size" not in t:
                    continue
                rows = np.flatnonzero(t["size"] == size)
                parts.append(t[column][rows] if column else s.patches[size][t["index"][rows]])
            if parts:
                return np.concatenate(parts)
            return np.zeros((0, 2) if column else (0, size, size), np.float32 if column else np.uint8)

        return cls(
            {s: gather("positives", s) for s in PATCH_SIZES},
            {s: gather("jittered", s) for s in PATCH_SIZES},
            {s: gather("jittered", s, "offset") for s in PATCH_SIZES},
            {s: gather("negatives", s) for s in PATCH_SIZES},
        )

    def usable_sizes(self) -> list[int]:
        return [s for s in PATCH_SIZES if len(self.positives[s]) and len(self.negatives[s])]


def shape_target(offsets: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """h = exp(-|v| / (2 sigma^2)) with v the offset in units of the patch side."""
    return np.exp(-np.linalg.norm(offsets, axis=1) / size / (2 * sigma**2)).astype(np.float32)


def detector_loss(
    x_pos: torch.Tensor, x_jit: torch.Tensor, h_jit: torch.Tensor, x_neg: torch.Tensor, hinge_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The detector loss of the module docs for one batch of scores."""
    hinge = torch.cat([F.relu(1 - x_pos), F.relu(1 + x_neg)]).mean()
    shape = torch.cat([(x_pos - 1) ** 2, (x_jit - h_jit) ** 2, x_neg**2]).mean()
    loss = hinge_weight * hinge + (1 - hinge_weight) * shape
    return loss, {"hinge": float(hinge.detach()), "shape": float(shape.detach())}


def train_detector(
    patch_files: list[Path],
    output: Path,
    conf: TrainDetectorConf = TrainDetectorConf(),
    *,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """Train the detector (resumable) and write ``output``; returns the model card."""
    start, dev = start_training(conf, device)
    sets = [read_patches(p) for p in patch_files]
    data = DetectorData.from_sets(sets)
    sizes = data.usable_sizes()
    if not sizes:
        raise SfmkitError("the patch files hold no side with both positives and negatives")
    weights = np.sqrt([len(data.positives[s]) for s in sizes])
    weights = weights / weights.sum()
    net = MultiscaleDetector(conf.width).to(dev)
    optimiser = torch.optim.SGD(
        net.parameters(), lr=conf.lr, momentum=conf.momentum, weight_decay=conf.weight_decay
    )
    half = conf.batch // 2

    def step(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        size = int(rng.choice(sizes, p=weights))
        pos = data.positives[size][rng.integers(len(data.positives[size]), size=half)]
        pool = data.negatives[size][rng.integers(len(data.negatives[size]), size=half * conf.negative_pool)]
        if len(data.jittered[size]):
            rows = rng.integers(len(data.jittered[size]), size=half)
            jit = data.jittered[size][rows]
            h_jit = torch.from_numpy(shape_target(data.offsets[size][rows], size, conf.shape_sigma)).to(dev)
        else:
            jit = np.zeros((0, size, size), np.uint8)
            h_jit = torch.zeros(0, device=dev)
        # one forward pass for everything: batch normalisation must see positives and
        # negatives together, as it will at inference
        scores = net(to_input(np.concatenate([pos, jit, pool]), dev), size)
        x_pos, x_jit, x_pool = scores[:half], scores[half : half + len(jit)], scores[half + len(jit) :]
        x_neg = x_pool.topk(half).values  # hardest: the highest-scoring negatives
        loss, parts = detector_loss(x_pos, x_jit, h_jit, x_neg, conf.hinge_weight)
        return loss, {**parts, "size": size}

    state = run_training(
        "train keypoints", net, optimiser, step, conf, patch_files, output, network=NETWORK_VERSION
    )
    card = model_card(
        _what("detector"),
        command,
        conf,
        patch_files,
        state,
        start,
        positives_per_size={str(s): int(len(data.positives[s])) for s in PATCH_SIZES},
        negatives=int(sum(len(v) for v in data.negatives.values())),
    )
    _save(output, "detector", net, card, state)
    return card


# ---------------------------------------------------------------------------------- descriptor


@dataclass
class DescriptorData:
    """Every positive resized to 64 x 64, and for each point the rows of its views."""

    patches: np.ndarray
    tracks: list[np.ndarray]

    @classmethod
    def from_sets(cls, sets: list[PatchSet]) -> DescriptorData:
        patches, keys = [], []
        for k, s in enumerate(sets):
            pos = s.positives
            if "size" not in pos:
                continue
            resized = np.zeros((len(pos["size"]), DESCRIPTOR_INPUT, DESCRIPTOR_INPUT), np.uint8)
            for size in np.unique(pos["size"]):
                rows = np.flatnonzero(pos["size"] == size)
                resized[rows] = resize_patches(s.patches[int(size)][pos["index"][rows]])
            patches.append(resized)
            keys.append(np.column_stack([np.full(len(pos["track"]), k), pos["track"], pos["image"]]))
        if not patches:
            raise SfmkitError("the patch files hold no positives")
        all_patches = np.concatenate(patches)
        key = np.concatenate(keys)
        order = np.lexsort((key[:, 1], key[:, 0]))
        tracks = []
        start = 0
        bounds = np.flatnonzero(np.any(np.diff(key[order, :2], axis=0) != 0, axis=1)) + 1
        for end in [*bounds.tolist(), len(order)]:
            rows = order[start:end]
            if len(np.unique(key[rows, 2])) >= 2:
                tracks.append(rows)
            start = end
        return cls(all_patches, tracks)


def hardest_triplet_loss(
    anchors: torch.Tensor, positives: torch.Tensor, margin: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Triplet margin loss with, for each anchor, the closest view of another point.

    ``anchors[i]`` and ``positives[i]`` are two views of point i; both sets serve as negatives.
    """
    n = len(anchors)
    d_ap = (anchors - positives).norm(dim=1)
    others = torch.cat([anchors, positives])
    dist = torch.cdist(anchors, others)
    same = torch.eye(n, dtype=torch.bool, device=anchors.device).repeat(1, 2)
    d_an = dist.masked_fill(same, float("inf")).min(dim=1).values
    loss = F.relu(d_ap - d_an + margin).mean()
    return loss, {"d_pos": float(d_ap.mean().detach()), "d_neg": float(d_an.mean().detach())}


def train_descriptor(
    patch_files: list[Path],
    output: Path,
    conf: TrainDescriptorConf = TrainDescriptorConf(),
    *,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """Train the descriptor (resumable) and write ``output``; returns the model card."""
    start, dev = start_training(conf, device)
    data = DescriptorData.from_sets([read_patches(p) for p in patch_files])
    if len(data.tracks) < conf.batch:
        raise SfmkitError(
            f"only {len(data.tracks)} points have views in two images, fewer than --batch {conf.batch}"
        )
    net = TripletDescriptor(conf.dim).to(dev)
    optimiser = torch.optim.SGD(
        net.parameters(), lr=conf.lr, momentum=conf.momentum, weight_decay=conf.weight_decay
    )

    def step(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        chosen = rng.choice(len(data.tracks), conf.batch, replace=False)
        pairs = np.array([rng.choice(data.tracks[t], 2, replace=False) for t in chosen])
        emb = net(to_input(data.patches[pairs.reshape(-1)], dev)).view(conf.batch, 2, -1)
        return hardest_triplet_loss(emb[:, 0], emb[:, 1], conf.margin)

    state = run_training(
        "train descriptor", net, optimiser, step, conf, patch_files, output, network=NETWORK_VERSION
    )
    card = model_card(
        _what("descriptor"),
        command,
        conf,
        patch_files,
        state,
        start,
        points=len(data.tracks),
        patches=int(len(data.patches)),
    )
    _save(output, "descriptor", net, card, state)
    return card


# ---------------------------------------------------------------------------------- shared


def _what(kind: str) -> str:
    return f"sfmkit multiscale-kp {kind} (Altwaijry et al. 2016), trained by sfmkit"


def _save(output: Path, kind: str, net: torch.nn.Module, card: dict[str, Any], state: LoopState) -> None:
    save_network(Path(output), kind, net.cpu(), card)
    write_history(output, card, state)
