"""Balanced same / different image pairs from overlap labels (``build-gl3d-labels`` output), the
scene data of GetNet.

Positives are the labels' strong pairs (combined overlap CO in the strong interval) and weak
pairs (CO in the weak interval: the shared region is small, the case GetNet is made for).
Negatives are pairs with CO = 0 in one scene and random pairs of images of two different
scenes, as many negatives as positives (half from each source where the scene has enough).
The region of image i in pair (i, j) is the bounding box of the labels' overlap mask (cells
of i that see what j sees), as fractions of the image side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.labels import image_folder, read_labels
from sfmkit.io.pairsets import KINDS, PairSet, load_square
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScenePairConf:
    """Options of ``build-pair-set`` on labels files.

    Attributes:
        size: side of the stored (squashed) images.
        max_positives: positives kept per scene at most (drawn at random; 0: all).
        same_scene_negatives: share of the negatives drawn inside a scene (CO = 0).
        seed: random seed.
    """

    size: int = 128
    max_positives: int = 0
    same_scene_negatives: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 16 or self.max_positives < 0 or not 0 <= self.same_scene_negatives <= 1:
            raise ConfigError(
                "build-pair-set needs size >= 16, max_positives >= 0, same-scene share in [0, 1]"
            )


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1) of a boolean mask's true cells, as fractions of its side;
    NaN when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.full(4, np.nan, np.float32)
    h, w = mask.shape
    return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h], np.float32)


def scene_pair_set(labels_files: list[Path], conf: ScenePairConf) -> PairSet:
    """Read every labels file and its images; return the balanced pair set."""
    if not labels_files:
        raise SfmkitError("build-pair-set needs at least one labels file")
    rng = np.random.default_rng(conf.seed)
    images: list[np.ndarray] = []
    names: list[str] = []
    group: list[int] = []
    rows: list[tuple[int, int, int, float, np.ndarray]] = []
    scene_rows: list[np.ndarray] = []
    same_scene_neg: list[tuple[int, int]] = []
    for scene, path in enumerate(labels_files):
        labels = read_labels(path)
        folder = image_folder(path, labels)
        offset = len(images)
        for name in track(labels.names, f"images of {Path(path).parent.name}"):
            square, _ = load_square(folder / name, conf.size)
            images.append(square)
            names.append(f"{Path(path).parent.name}/{name}")
            group.append(scene)
        scene_rows.append(np.arange(offset, offset + len(labels.names)))
        positives = [(i, j, KINDS["strong"]) for i, j in labels.strong] + [
            (i, j, KINDS["weak"]) for i, j in labels.weak
        ]
        if conf.max_positives and len(positives) > conf.max_positives:
            keep = rng.choice(len(positives), conf.max_positives, replace=False)
            positives = [positives[k] for k in sorted(keep)]
        before = len(rows)
        for i, j, kind in positives:
            i, j = int(i), int(j)
            if (i, j) not in labels.masks or (j, i) not in labels.masks:
                continue
            box = np.stack([mask_box(labels.masks[(i, j)]), mask_box(labels.masks[(j, i)])])
            if np.isnan(box).any():
                continue
            rows.append((offset + i, offset + j, kind, float(labels.combined[i, j]), box))
        n = len(labels.names)
        ii, jj = np.nonzero(np.triu(labels.combined == 0, k=1) & np.triu(labels.mesh == 0, k=1))
        same_scene_neg += [(offset + int(a), offset + int(b)) for a, b in zip(ii, jj, strict=True)]
        logger.info(
            "%s: %d images, %d positives, %d zero-overlap pairs", path, n, len(rows) - before, len(ii)
        )
    n_pos = len(rows)
    if not n_pos:
        raise SfmkitError("the labels files hold no strong or weak pair with overlap masks")
    want_same = min(len(same_scene_neg), int(round(n_pos * conf.same_scene_negatives)))
    for k in rng.choice(len(same_scene_neg), want_same, replace=False) if want_same else []:
        a, b = same_scene_neg[int(k)]
        rows.append((a, b, KINDS["negative-same-scene"], 0.0, np.full((2, 4), np.nan, np.float32)))
    want_other = n_pos - want_same
    if want_other and len(scene_rows) < 2:
        logger.warning(
            "one scene only: %d negatives instead of %d (give more labels files)", want_same, n_pos
        )
        want_other = 0
    drawn: set[tuple[int, int]] = set()
    for _ in range(50 * want_other):  # unique pairs; scenes weighted by their image count
        if len(drawn) == want_other:
            break
        a, b = (int(v) for v in rng.choice(len(images), 2, replace=False))
        if group[a] != group[b]:
            drawn.add((min(a, b), max(a, b)))
    for a, b in sorted(drawn):
        rows.append((a, b, KINDS["negative-other"], 0.0, np.full((2, 4), np.nan, np.float32)))
    order = rng.permutation(len(rows))
    rows = [rows[k] for k in order]
    kind = np.array([r[2] for r in rows], np.uint8)
    return PairSet(
        images=np.stack(images),
        names=names,
        group=np.array(group, np.int32),
        pairs=np.array([(r[0], r[1]) for r in rows], np.int32),
        same=(kind >= KINDS["strong"]).astype(np.uint8),
        kind=kind,
        overlap=np.array([r[3] for r in rows], np.float32),
        region=np.stack([r[4] for r in rows]).astype(np.float32),
        attrs={},
    )
