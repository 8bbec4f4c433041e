"""``sfmkit train pair-verify``: GetNet (spatial transformer + Siamese) and, with ``stn=False``,
the plain Siamese baseline, trained with the contrastive loss on pair sets
(``sfmkit build-pair-set``), through the shared resumable loop.

Alternating training (the paper's): with ``alternate = N > 0`` the steps run in phases of N:
the whole network first (a transformer trained against a random, frozen Siamese network would
learn nothing), then the transformer alone with the Siamese network frozen (its parameters
untouched and its batch-norm statistics fixed), then the whole network again, and so on.
``alternate = 0`` trains everything jointly at every step. The localisation network learns at
``stn_lr`` times the learning rate (as spatial transformers usually do), so the windows move
slowly while the embedding settles.

Each batch is augmented: both images of a pair mirrored together (their regions with them),
and, for photos, an independent brightness and contrast change of each image.

At the end the decision threshold on the distance is the one with the best accuracy on
(up to) 4,000 training pairs; it is stored in the model card with that accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfmkit.errors import ConfigError
from sfmkit.io.pairsets import PairSet, merge_pair_sets, read_pair_set
from sfmkit.models.getnet import (
    NETWORK_VERSION,
    GetNet,
    arch_from,
    contrastive_loss,
    predict_pairs,
    save_getnet,
    shipped_state,
    to_input,
)
from sfmkit.train.loop import model_card, run_training, start_training, write_history

logger = logging.getLogger(__name__)

PHASES = ("all", "stn")


@dataclass(frozen=True)
class TrainPairConf:
    """Options of ``train pair-verify``.

    Attributes:
        arch: network preset (:data:`sfmkit.models.getnet.ARCHS`); channels and input size
            follow the data.
        pairing: how the localisation network sees the other image (``stack`` or
            ``correlation``; None: the preset's).
        stn: GetNet (True) or the plain Siamese baseline (False).
        alternate: steps per phase of alternating training; 0: joint training.
        margin: margin of the contrastive loss (distances of unit vectors, in [0, 2]).
        region_weight: weight of the region guidance, a smooth-L1 pull of each predicted window
            towards the window of the set's region (overlap-mask box; digits: the glyph box)
            on the pairs that have one; 0: the contrastive loss alone, as in the paper.
        stn_lr: the localisation network's learning rate over ``lr``.
        batch: pairs per step.
        steps, lr, weight_decay: AdamW optimisation.
        seed, checkpoint_every: random seed; steps between checkpoints.
    """

    arch: str = "scenes"
    pairing: str | None = None
    stn: bool = True
    alternate: int = 200
    margin: float = 1.0
    region_weight: float = 1.0
    stn_lr: float = 1.0
    batch: int = 32
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        arch_from(self.arch, **({"pairing": self.pairing} if self.pairing else {}))
        if self.batch < 2 or self.steps < 0 or self.lr <= 0 or self.alternate < 0:
            raise ConfigError("train pair-verify needs batch >= 2, steps >= 0, lr > 0, alternate >= 0")
        if not 0 < self.margin <= 2 or self.stn_lr <= 0 or self.region_weight < 0:
            raise ConfigError("train pair-verify needs a margin in (0, 2], stn_lr > 0, region_weight >= 0")

    @property
    def variant(self) -> str:
        """``siamese``, ``getnet`` (alternating) or ``getnet-joint``; then the pairing when one is
        named, and ``-unguided`` when the transformer learns from the contrastive loss alone."""
        if not self.stn:
            return "siamese"
        name = "getnet" if self.alternate else "getnet-joint"
        name = f"{name}-{self.pairing}" if self.pairing else name
        return name if self.region_weight else f"{name}-unguided"


def phase_at(step: int, conf: TrainPairConf) -> str:
    """What trains at ``step``: ``all`` or ``stn`` (the Siamese network frozen)."""
    if not conf.stn or not conf.alternate:
        return "all"
    return PHASES[(step // conf.alternate) % 2]


def set_phase(net: GetNet, phase: str) -> None:
    """Freeze what ``phase`` does not train: no gradients, and batch norm in inference mode."""
    siamese = phase == "all"
    for p in net.siamese.parameters():
        p.requires_grad_(siamese)
    net.siamese.train(siamese)
    if net.localisation is not None:
        for p in net.localisation.parameters():
            p.requires_grad_(True)
        net.localisation.train(True)


def augment(
    a: np.ndarray, b: np.ndarray, region: np.ndarray, rng: np.random.Generator, photometric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror both images of each pair together (half the pairs; their regions (n, 2, 4) with
    them); jitter photos independently."""
    flip = rng.random(len(a)) < 0.5
    a, b, region = a.copy(), b.copy(), region.copy()
    a[flip], b[flip] = a[flip, ..., ::-1], b[flip, ..., ::-1]
    region[flip, :, 0], region[flip, :, 2] = 1 - region[flip, :, 2], 1 - region[flip, :, 0]
    if photometric:
        out = []
        for x in (a, b):
            gain = rng.uniform(0.7, 1.3, (len(x), 1, 1, 1))
            bias = rng.uniform(-25, 25, (len(x), 1, 1, 1))
            mean = x.mean(axis=(1, 2, 3), keepdims=True)
            out.append(np.clip((x - mean) * gain + mean + bias, 0, 255).astype(np.uint8))
        a, b = out
    return a, b, region


def window_targets(region: torch.Tensor) -> torch.Tensor:
    """Regions (..., 4) as fractions -> the square window (s, t_x, t_y) that covers each: its
    centre, and a half side (normalised units) equal to the region's larger side fraction."""
    x0, y0, x1, y1 = region.unbind(-1)
    return torch.stack([torch.maximum(x1 - x0, y1 - y0), x0 + x1 - 1, y0 + y1 - 1], dim=-1)


def region_loss(ta: torch.Tensor, tb: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 distance of the predicted windows to the regions' windows, over the pairs
    that have regions (zero when none has)."""
    target = window_targets(region)
    pred = torch.stack([ta, tb], dim=1)
    ok = torch.isfinite(target).all(-1)
    if not ok.any():
        return pred.sum() * 0.0
    return torch.nn.functional.smooth_l1_loss(pred[ok], target[ok], beta=0.1)


def pair_distances(net: GetNet, data: PairSet, rows: np.ndarray, batch: int = 128) -> np.ndarray:
    """Distances of the pairs ``rows`` of ``data`` (inference mode)."""
    return predict_pairs(net, data.images, data.pairs[rows], batch, "pair distances")["distance"]


def best_threshold(distance: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The distance threshold with the best accuracy of ``distance < t`` as "same", and it."""
    order = np.argsort(distance)
    d, y = distance[order], same[order].astype(bool)
    # accuracy when the first k sorted pairs are called "same"
    correct = np.concatenate([[0], np.cumsum(y)]) + np.concatenate([[(~y).sum()], (~y).sum() - np.cumsum(~y)])
    # a cut inside a run of equal distances cannot be made by a threshold
    valid = np.concatenate([[True], d[1:] > d[:-1], [True]])
    correct = np.where(valid, correct, -1)
    k = int(np.argmax(correct))
    if k == 0:
        t = float(d[0]) - 1e-6
    elif k == len(d):
        t = float(d[-1]) + 1e-6
    else:
        t = float(0.5 * (d[k - 1] + d[k]))
    return t, float(correct[k] / len(d))


def train_pair_verify(
    set_files: list[Path], output: Path, conf: TrainPairConf, *, device: str = "auto", command: str = ""
) -> dict[str, Any]:
    """Train, calibrate the threshold, write the model file and its card; return the card."""
    data = merge_pair_sets([read_pair_set(p) for p in set_files])
    pairing = {"pairing": conf.pairing} if conf.pairing else {}
    arch = arch_from(conf.arch, stn=conf.stn, channels=data.channels, size=data.size, **pairing)
    if arch.crop > data.size:
        arch = arch_from(arch, crop=data.size)
    start, dev = start_training(conf, device)
    net = GetNet(arch).to(dev)
    groups = [{"params": net.siamese.parameters(), "lr": conf.lr}]
    if net.localisation is not None:
        groups.append({"params": net.localisation.parameters(), "lr": conf.lr * conf.stn_lr})
    optimiser = torch.optim.AdamW(groups, lr=conf.lr, weight_decay=conf.weight_decay)
    photometric = data.channels == 3

    def step(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = rng.integers(len(data), size=conf.batch)
        idx = data.pairs[rows]
        a, b, region = augment(
            data.images[idx[:, 0]], data.images[idx[:, 1]], data.region[rows], rng, photometric
        )
        out = net(to_input(a, dev), to_input(b, dev))
        same = torch.from_numpy(data.same[rows]).to(dev)
        contrastive = contrastive_loss(out["distance"], same, conf.margin)
        parts = {"contrastive": float(contrastive.detach()), "scale": float(out["ta"][:, 0].mean().detach())}
        if net.localisation is None or not conf.region_weight:
            return contrastive, parts
        guide = region_loss(out["ta"], out["tb"], torch.from_numpy(region).to(dev))
        parts["region"] = float(guide.detach())
        return contrastive + conf.region_weight * guide, parts

    state = run_training(
        f"train pair-verify ({conf.variant})",
        net,
        optimiser,
        step,
        conf,
        list(set_files),
        output,
        before_step=lambda k: set_phase(net, phase_at(k, conf)),
        network=arch.__dict__ | {"siamese": list(arch.siamese), "localisation": list(arch.localisation)},
        network_version=NETWORK_VERSION,
    )
    # calibrate the weights as they are shipped (kernels rounded to float16 by save_getnet)
    net.load_state_dict(shipped_state(net))
    rng = np.random.default_rng(conf.seed + 1)
    rows = rng.choice(len(data), min(len(data), 4000), replace=False)
    threshold, accuracy = best_threshold(pair_distances(net, data, rows), data.same[rows])
    logger.info("threshold %.3f: training accuracy %.3f", threshold, accuracy)
    card = model_card(
        f"GetNet pair verifier ({conf.variant})",
        command,
        conf,
        list(set_files),
        state,
        start,
        variant=conf.variant,
        pairs=len(data),
        threshold=threshold,
        train_accuracy=accuracy,
    )
    save_getnet(output, net, card)
    write_history(output, card, state)
    return card
