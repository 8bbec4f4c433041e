"""``sfmkit train localize-triplet`` and ``sfmkit train localize``: the triplet sliding-window
baseline and FTFY, trained on localisation sets (``sfmkit build-localize-set``).

Triplet baseline: the anchor is a target (the close-up). The positive is its box cut from
its source tile. The negatives are a window of the same size in the same tile that overlaps
the box by IoU < 0.3, and the closest positive of another sample in the batch. The loss is
the triplet margin loss on L2 distances, plus the global orthogonal regularisation of Zhang
et al. ("Learning Spread-out Local Feature Descriptors", ICCV 2017), which spreads
non-matching embeddings over the sphere.

FTFY: a localisation loss on (target, source, box) samples, :func:`sfmkit.models.ftfy.softmax_loss`
(default) or the paper's YOLO-v1 loss (``--loss yolo``). A fraction ``negatives`` of the
samples is paired with the source of another image, where the target is absent. With
``--init``, the extractor starts from a trained triplet baseline. The first ``head_steps``
then train only the filter generator and head on the extractor's features of every source
and target, computed once (about a tenth of the cost of a full step, so many more steps fit
the CPU budget; the flips and transpositions are then applied to the feature maps). The
remaining steps fine-tune everything, the extractor at ``extractor_lr`` times the learning
rate.

Both augment each batch with one of the eight flips and transpositions, applied to target,
source and box alike, and with an independent brightness and contrast change of each image.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.localize import LocalizeSet, read_localize_set
from sfmkit.localize.search import box_iou_np, crop_windows
from sfmkit.models.ftfy import (
    LOSSES,
    SOURCE_SIZE,
    FTFYNet,
    TripletNet,
    arch_from,
    load_network,
    save_network,
    softmax_loss,
    to_input,
    yolo_loss,
)
from sfmkit.train.loop import model_card, run_training, start_training, write_history
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainTripletConf:
    """Options of ``train localize-triplet``.

    Attributes:
        arch: network widths, ``small`` or ``paper`` (:data:`sfmkit.models.ftfy.ARCHS`).
        batch: samples per step.
        margin: triplet margin on L2 distances of unit vectors.
        gor_weight: weight of the global orthogonal regularisation.
        steps, lr, weight_decay: Adam optimisation.
        seed, checkpoint_every: random seed; steps between checkpoints.
    """

    arch: str = "small"
    batch: int = 32
    margin: float = 0.5
    gor_weight: float = 1.0
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        arch_from(self.arch)
        if self.batch < 2 or self.margin <= 0 or self.steps < 0 or self.lr <= 0:
            raise ConfigError("train localize-triplet needs batch >= 2, margin > 0, steps >= 0, lr > 0")


@dataclass(frozen=True)
class TrainFTFYConf:
    """Options of ``train localize``.

    Attributes:
        arch: network widths, ``small`` or ``paper``.
        correlation: ``dot`` (the authors' code) or ``cosine`` (the paper).
        batch: samples per step.
        loss: ``softmax`` (:func:`sfmkit.models.ftfy.softmax_loss`) or ``yolo`` (the paper's).
        negatives: fraction of samples given the source of another image (target absent).
        head_steps, head_batch: steps (and their batch) that train the filter generator and
            head alone on precomputed extractor features, before ``steps`` full steps (needs
            ``--init``).
        extractor_lr: the extractor's learning rate over ``lr`` when it starts from ``--init``.
        steps, lr, weight_decay: Adam optimisation.
        seed, checkpoint_every: random seed; steps between checkpoints.
    """

    arch: str = "small"
    correlation: str = "dot"
    loss: str = "softmax"
    negatives: float = 0.25
    batch: int = 16
    head_steps: int = 0
    head_batch: int = 64
    extractor_lr: float = 0.1
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        self.net_arch()
        if self.batch < 1 or self.head_batch < 1 or self.steps < 0 or self.head_steps < 0:
            raise ConfigError("train localize needs batch, head_batch >= 1 and steps, head_steps >= 0")
        if self.lr <= 0 or self.extractor_lr < 0:
            raise ConfigError("train localize needs lr > 0 and extractor_lr >= 0")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown localisation loss {self.loss!r}; choose one of {list(LOSSES)}")
        if not 0 <= self.negatives < 1 or (self.negatives and self.loss != "softmax"):
            raise ConfigError("negatives is a fraction in [0, 1), and needs --loss softmax")

    def net_arch(self) -> Any:
        base = arch_from(self.arch)
        return arch_from({**base.__dict__, "correlation": self.correlation})


class LocalizeData:
    """Every sample of one or more localisation sets, in memory."""

    def __init__(self, sets: list[LocalizeSet]) -> None:
        if not sets or not sum(len(s) for s in sets):
            raise SfmkitError("the localisation sets hold no samples")
        offsets = np.cumsum([0] + [len(s.sources) for s in sets[:-1]])
        self.targets = np.concatenate([s.targets for s in sets])
        self.sources = np.concatenate([s.sources for s in sets])
        self.group = np.concatenate([s.samples["group"] + o for s, o in zip(sets, offsets, strict=True)])
        self.boxes = np.concatenate([s.samples["box"] for s in sets]).astype(np.float32)
        #: Image of each source, unique across sets.
        self.image = np.concatenate([s.groups["image"] + 1_000_000 * i for i, s in enumerate(sets)])

    def __len__(self) -> int:
        return len(self.targets)

    def pair(
        self, rows: np.ndarray, negatives: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The source of each sample, replaced with probability ``negatives`` by a source of
        another image; and whether the target is in it."""
        own = self.group[rows]
        groups, present = own.copy(), np.ones(len(rows), bool)
        drawn = np.flatnonzero(rng.random(len(rows)) < negatives)
        if len(drawn):
            others = rng.integers(0, len(self.sources), len(drawn))
            elsewhere = self.image[others] != self.image[own[drawn]]  # same image: keep its own
            groups[drawn[elsewhere]] = others[elsewhere]
            present[drawn[elsewhere]] = False
        return groups, present

    def batch(
        self, rows: np.ndarray, device: torch.device, groups: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets, sources (network input) and boxes (fractions of the source side)."""
        return (
            to_input(self.targets[rows], device),
            to_input(self.sources[self.group[rows] if groups is None else groups], device),
            torch.from_numpy(self.boxes[rows]).to(device),
        )


def augment(
    target: torch.Tensor, source: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One of the eight flips/transpositions for the whole batch (images and boxes alike), and
    an independent brightness and contrast change per image."""
    target, source, boxes = dihedral(target, source, boxes, rng)

    def photometric(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        gain = torch.from_numpy(rng.uniform(0.75, 1.25, (n, 1, 1, 1))).to(x)
        shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (n, 1, 1, 1))).to(x)
        return ((x * gain) + shift).clamp(-0.5, 0.5)

    return photometric(target), photometric(source), boxes


def dihedral(
    target: torch.Tensor, source: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One of the eight flips/transpositions of (n, c, h, w) maps, applied to both and to the
    boxes (fractions of the source side)."""
    if rng.random() < 0.5:
        target, source = target.transpose(2, 3), source.transpose(2, 3)
        boxes = boxes[:, [1, 0, 3, 2]]
    if rng.random() < 0.5:
        target, source = target.flip(3), source.flip(3)
        boxes = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    if rng.random() < 0.5:
        target, source = target.flip(2), source.flip(2)
        boxes = torch.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], dim=1)
    return target.contiguous(), source.contiguous(), boxes.contiguous()


def _far_windows(boxes: np.ndarray, rng: np.random.Generator, max_iou: float = 0.3) -> np.ndarray:
    """For each box (fractions), a box of the same size elsewhere in the tile with IoU < max_iou
    (the farthest of a few random tries when none is found)."""
    out = np.empty_like(boxes)
    size = boxes[:, 2:] - boxes[:, :2]
    for i, (box, wh) in enumerate(zip(boxes, size, strict=True)):
        lo = rng.uniform(0, np.clip(1 - wh, 0, None), (16, 2))
        cand = np.concatenate([lo, lo + wh], axis=1)
        iou = box_iou_np(cand, box[None])
        ok = np.flatnonzero(iou < max_iou)
        out[i] = cand[ok[0]] if len(ok) else cand[iou.argmin()]
    return out


def triplet_loss(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float, gor_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Triplet margin loss with the harder of the given negative and the closest other
    positive, plus global orthogonal regularisation over the anchor-negative pairs."""
    n, dim = anchors.shape
    d_ap = (anchors - positives).norm(dim=1)
    d_given = (anchors - negatives).norm(dim=1)
    d_others = torch.cdist(anchors, positives).masked_fill(
        torch.eye(n, dtype=torch.bool, device=anchors.device), float("inf")
    )
    d_an = torch.minimum(d_given, d_others.min(dim=1).values)
    triplet = F.relu(d_ap - d_an + margin).mean()
    dots = (anchors * negatives).sum(1)
    gor = dots.mean() ** 2 + F.relu((dots**2).mean() - 1.0 / dim)
    loss = triplet + gor_weight * gor
    return loss, {
        "triplet": float(triplet.detach()),
        "gor": float(gor.detach()),
        "d_pos": float(d_ap.mean().detach()),
        "d_neg": float(d_an.mean().detach()),
    }


def _sets(paths: list[Path]) -> LocalizeData:
    if not paths:
        raise SfmkitError("give at least one localisation set (made by 'sfmkit build-localize-set')")
    return LocalizeData([read_localize_set(p) for p in paths])


def train_triplet(
    set_files: list[Path],
    output: Path,
    conf: TrainTripletConf = TrainTripletConf(),
    *,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """Train the triplet baseline (resumable) and write ``output``; returns the model card."""
    start, dev = start_training(conf, device)
    data = _sets(set_files)
    net = TripletNet(conf.arch).to(dev)
    optimiser = torch.optim.Adam(net.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)

    def step(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = rng.choice(len(data), conf.batch, replace=len(data) < conf.batch)
        target, source, boxes = augment(*data.batch(rows, dev), rng)
        far = torch.from_numpy(_far_windows(boxes.cpu().numpy(), rng)).to(dev)
        index = torch.arange(len(rows), device=dev)
        windows = crop_windows(source, torch.cat([boxes, far]) * SOURCE_SIZE, torch.cat([index, index]))
        emb = net(torch.cat([target, windows]))
        n = len(rows)
        return triplet_loss(emb[:n], emb[n : 2 * n], emb[2 * n :], conf.margin, conf.gor_weight)

    state = run_training("train localize-triplet", net, optimiser, step, conf, set_files, output)
    card = model_card(
        "sfmkit FTFY triplet sliding-window baseline (Ha et al.), trained by sfmkit",
        command,
        conf,
        set_files,
        state,
        start,
        samples=len(data),
    )
    save_network(Path(output), "triplet", net.cpu(), card)
    write_history(output, card, state)
    return card


def train_ftfy(
    set_files: list[Path],
    output: Path,
    conf: TrainFTFYConf = TrainFTFYConf(),
    *,
    init: Path | None = None,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """Train FTFY (resumable) and write ``output``; returns the model card. ``init``: a triplet
    baseline file whose extractor FTFY starts from (same ``arch``)."""
    start, dev = start_training(conf, device)
    if conf.head_steps and init is None:
        raise ConfigError("--head-steps trains on the features of a trained extractor: give --init")
    data = _sets(set_files)
    net = FTFYNet(conf.net_arch())
    if init is not None:
        triplet, _ = load_network("triplet", init)
        if tuple(triplet.conf.extractor) != tuple(net.conf.extractor):  # type: ignore[union-attr]
            raise SfmkitError(
                f"{init} has extractor widths {triplet.conf.extractor}, but --arch {conf.arch} has "  # type: ignore[union-attr]
                f"{net.conf.extractor}: train the baseline with the same --arch"
            )
        net.extractor.load_state_dict(triplet.extractor.state_dict())  # type: ignore[union-attr]
    net = net.to(dev)
    files = [*set_files, *([Path(init)] if init is not None else [])]
    output = Path(output)

    def loss_of(logits: torch.Tensor, boxes: torch.Tensor, present: np.ndarray) -> tuple[torch.Tensor, dict]:
        if conf.loss == "yolo":
            return yolo_loss(torch.sigmoid(logits), boxes)
        return softmax_loss(logits, boxes, torch.from_numpy(present).to(logits.device))

    head_history: list[dict[str, float]] = []
    if conf.head_steps:
        head_history = _train_head(net, data, conf, files, output, dev, loss_of)
    scale = conf.extractor_lr if init is not None else 1.0
    rest = [p for name, p in net.named_parameters() if not name.startswith("extractor.")]
    optimiser = torch.optim.Adam(
        [{"params": net.extractor.parameters(), "lr": conf.lr * scale}, {"params": rest, "lr": conf.lr}],
        weight_decay=conf.weight_decay,
    )

    def step(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = rng.choice(len(data), conf.batch, replace=len(data) < conf.batch)
        groups, present = data.pair(rows, conf.negatives, rng)
        target, source, boxes = augment(*data.batch(rows, dev, groups), rng)
        return loss_of(net.logits(net.filters(target), net.extractor(source)), boxes, present)

    state = run_training("train localize", net, optimiser, step, conf, files, output)
    state.history = head_history + state.history
    card = model_card(
        "sfmkit FTFY close-up localiser (Ha et al.), trained by sfmkit",
        command,
        conf,
        files,
        state,
        start,
        samples=len(data),
        init=None if init is None else str(init),
        head_steps_done=len(head_history),
    )
    save_network(output, "ftfy", net.cpu(), card)
    write_history(output, card, state)
    return card


def _train_head(
    net: FTFYNet,
    data: LocalizeData,
    conf: TrainFTFYConf,
    files: list[Path],
    output: Path,
    dev: torch.device,
    loss_of: Any,
) -> list[dict[str, float]]:
    """The ``head_steps`` of :func:`train_ftfy`: filter generator and head on the frozen
    extractor's features (checkpointed as ``<output>-head.ckpt``); returns their history."""
    cache: dict[str, torch.Tensor] = {}

    def features() -> dict[str, torch.Tensor]:
        if not cache:
            net.extractor.eval()
            with torch.inference_mode():
                for name, images in (("targets", data.targets), ("sources", data.sources)):
                    parts = [
                        net.extractor(to_input(images[i : i + 64], dev)).half()
                        for i in track(range(0, len(images), 64), f"features of the {name}")
                    ]
                    cache[name] = torch.cat(parts)
            net.extractor.train()
        return cache

    trained = torch.nn.ModuleDict({k: m for k, m in net.named_children() if k != "extractor"})
    optimiser = torch.optim.Adam(trained.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)

    def step(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        feats = features()
        rows = rng.choice(len(data), conf.head_batch, replace=len(data) < conf.head_batch)
        groups, present = data.pair(rows, conf.negatives, rng)
        target = feats["targets"][torch.from_numpy(rows)].float()
        source = feats["sources"][torch.from_numpy(groups)].float()
        boxes = torch.from_numpy(data.boxes[rows]).to(dev)
        target, source, boxes = dihedral(target, source, boxes, rng)
        return loss_of(net.logits(net.target_filters(target), source), boxes, present)

    head_conf = dataclasses.replace(conf, steps=conf.head_steps, head_steps=0)
    head_output = output.with_name(output.stem + "-head.pt")
    state = run_training("train localize (head)", trained, optimiser, step, head_conf, files, head_output)
    return [{**h, "phase": 0.0} for h in state.history]
