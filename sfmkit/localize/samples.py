"""Patch groups for FTFY and its triplet baseline, cut from any folder of large images
(``sfmkit build-localize-set``).

For every image and down-sampling factor ``f`` the image is reduced ``f`` times, and
``groups_per_factor`` *key boxes* are placed on it. A key box is square, with side ``b`` in
reduced pixels drawn in ``[box_min, box_max]`` (less where the image is too small for the
context). Its position is drawn with probability in proportion to the local gradient energy,
so flat sky and blank walls are rarely chosen. Each key box gets ``repeats`` shifted copies
in each IoU band of :data:`BANDS`. The *group window* is the square that holds them all; the
*source* is a square ``context`` times the window's side, placed at random around it in the
reduced image and resized to 256x256. Each box of the group gives one sample:

- the *target*: the box cut from the full-resolution image (``f * b`` pixels) and resized
  to 128x128;
- its box in the source tile.

So a target shows ``f`` times the detail its footprint has in the source, which is the
close-up against wide view of the method.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sfmkit.errors import ConfigError, ImageReadError, SfmkitError
from sfmkit.io.images import list_images, read_image
from sfmkit.io.localize import write_localize_set
from sfmkit.models.ftfy import SOURCE_SIZE, TARGET_SIZE
from sfmkit.utils.config import conf_to_dict, conf_to_json
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

#: IoU bands of the shifted copies (the paper's).
BANDS: tuple[tuple[float, float], ...] = ((0.7, 1.0), (0.5, 0.7), (0.3, 0.5))
#: Largest window side over the key box side that shifted copies reach (the IoU 0.3 band
#: shifts a square by up to 0.54 of its side along one axis).
_WINDOW_GROWTH = 1.6


@dataclass(frozen=True)
class LocalizeSetConf:
    """Options of ``build-localize-set``.

    Attributes:
        factors: down-sampling factors of the sources (integers >= 1).
        groups_per_factor: key boxes per image and factor.
        repeats: shifted copies per IoU band and key box.
        box_min: smallest key box side, in reduced pixels.
        box_max: largest key box side, in reduced pixels (0: as large as fits).
        min_fraction: the key box side is at least this fraction of the largest that fits
            (test sets use about 0.5, so a whole-image search needs only a few tiles).
        query_side: when > 0, every key box is this many full-resolution pixels (its side in
            the reduced image is query_side / f); for test sets of fixed-size close-ups.
        context: source side over the group window's side.
        seed: random seed.
    """

    factors: tuple[int, ...] = (1, 2, 4, 6, 8, 10)
    groups_per_factor: int = 4
    repeats: int = 4
    box_min: int = 24
    box_max: int = 80
    min_fraction: float = 0.0
    query_side: int = 0
    context: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_factors(self.factors)
        if self.groups_per_factor < 1 or self.repeats < 0:
            raise ConfigError("groups_per_factor must be >= 1 and repeats >= 0")
        if self.box_min < 8 or (self.box_max and self.box_max < self.box_min):
            raise ConfigError(
                f"need 8 <= box_min <= box_max (or box_max 0), got {self.box_min} and {self.box_max}"
            )
        if self.query_side < 0:
            raise ConfigError(f"query_side must be >= 0, got {self.query_side}")
        if not 0 <= self.min_fraction <= 1:
            raise ConfigError(f"min_fraction must be in [0, 1], got {self.min_fraction}")
        if self.context < _WINDOW_GROWTH:
            raise ConfigError(f"context must be >= {_WINDOW_GROWTH} (the source must hold the group)")


def reduce_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(width, height) of an image of ``size`` reduced ``factor`` times (at least 1 pixel)."""
    return max(round(size[0] / factor), 1), max(round(size[1] / factor), 1)


def check_factors(factors: tuple[int, ...] | list[int]) -> None:
    """Down-sampling factors must be integers >= 1 (``--factors 0`` is a clear error)."""
    if not factors:
        raise ConfigError("give at least one down-sampling factor")
    bad = [f for f in factors if int(f) != f or f < 1]
    if bad:
        raise ConfigError(f"down-sampling factors must be integers >= 1, got {bad}")


@dataclass
class Group:
    """One patch group: its source tile and its samples."""

    factor: int
    window: np.ndarray  # (4,) source tile in full-resolution pixels
    source: np.ndarray  # (256, 256, 3) uint8
    targets: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # fractions of the source side
    boxes_full: list[np.ndarray] = field(default_factory=list)
    bands: list[int] = field(default_factory=list)


def iou_of_shift(side: float, dx: float, dy: float) -> float:
    """IoU of a square of side ``side`` with itself shifted by (dx, dy)."""
    inter = max(side - abs(dx), 0.0) * max(side - abs(dy), 0.0)
    return inter / (2 * side * side - inter)


def texture_weights(gray: np.ndarray, side: int) -> np.ndarray:
    """Gradient energy summed over every ``side`` x ``side`` window, (h - side + 1, w - side + 1)."""
    gy, gx = np.gradient(gray.astype(np.float64))
    energy = np.hypot(gx, gy)
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    s = side
    return integral[s:, s:] - integral[:-s, s:] - integral[s:, :-s] + integral[:-s, :-s]


def _shifted(
    key: np.ndarray, band: tuple[float, float], limits: tuple[int, int], rng: np.random.Generator
) -> np.ndarray | None:
    """A copy of the square ``key`` (x0, y0, x1, y1) shifted by whole pixels so that its IoU
    with ``key`` is in ``band`` and it stays inside ``limits`` (w, h); None if none found."""
    side = float(key[2] - key[0])
    for _ in range(200):
        dx, dy = rng.uniform(-0.6 * side, 0.6 * side, 2).round()
        if band[0] <= iou_of_shift(side, dx, dy) < band[1]:
            box = key + np.array([dx, dy, dx, dy])
            if box[0] >= 0 and box[1] >= 0 and box[2] <= limits[0] and box[3] <= limits[1]:
                return box
    return None


def make_groups(
    full: Image.Image, factor: int, conf: LocalizeSetConf, rng: np.random.Generator
) -> list[Group]:
    """The patch groups of one image at one factor (empty when the image is too small)."""
    width, height = full.size
    reduced_size = reduce_size(full.size, factor)
    reduced = full if factor == 1 else full.resize(reduced_size, Image.Resampling.LANCZOS)
    scale = np.array([width / reduced_size[0], height / reduced_size[1]] * 2)
    growth = _WINDOW_GROWTH if conf.repeats else 1.0
    fits = int(min(reduced_size) / (conf.context * growth))
    fixed = int(round(conf.query_side / factor)) if conf.query_side else 0
    if fits < (fixed or conf.box_min):
        return []
    gray = np.asarray(reduced.convert("L"), np.float32)
    groups = []
    for _ in range(conf.groups_per_factor):
        high = min(conf.box_max, fits) if conf.box_max else fits
        low = min(max(conf.box_min, int(conf.min_fraction * fits)), high)
        side = fixed or int(rng.integers(low, high + 1))
        weights = texture_weights(gray, side)
        flat = weights.ravel()
        flat = np.where(flat >= np.quantile(flat, 0.5), flat, 0.0) + 1e-9
        pick = int(rng.choice(len(flat), p=flat / flat.sum()))
        y0, x0 = divmod(pick, weights.shape[1])
        key = np.array([x0, y0, x0 + side, y0 + side], np.float64)
        boxes, bands = [key], [0]
        for b, band in enumerate(BANDS, start=1):
            for _ in range(conf.repeats):
                shifted = _shifted(key, band, reduced_size, rng)
                if shifted is not None:
                    boxes.append(shifted)
                    bands.append(b)
        stacked = np.array(boxes)
        lo, hi = stacked[:, :2].min(0), stacked[:, 2:].max(0)
        tile = int(round(conf.context * float((hi - lo).max())))
        tile = min(tile, *reduced_size)
        tx = int(rng.integers(max(0, int(hi[0]) - tile), min(int(lo[0]), reduced_size[0] - tile) + 1))
        ty = int(rng.integers(max(0, int(hi[1]) - tile), min(int(lo[1]), reduced_size[1] - tile) + 1))
        window = np.array([tx, ty, tx + tile, ty + tile], np.float64)
        source = reduced.resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.LANCZOS, box=tuple(window))
        group = Group(factor, window * scale, np.asarray(source, np.uint8))
        for box, band in zip(stacked, bands, strict=True):
            box_full = box * scale
            target = full.resize((TARGET_SIZE, TARGET_SIZE), Image.Resampling.LANCZOS, box=tuple(box_full))
            group.targets.append(np.asarray(target, np.uint8))
            group.boxes.append((box - np.array([tx, ty, tx, ty])) / tile)
            group.boxes_full.append(box_full)
            group.bands.append(band)
        groups.append(group)
    return groups


def build_localize_set(
    images: Path, output: Path, conf: LocalizeSetConf = LocalizeSetConf()
) -> dict[str, Any]:
    """Write ``output`` (layout in :mod:`sfmkit.io.localize`) from the images under ``images``;
    returns counts. Unreadable images are skipped with a warning and listed in the counts."""
    images, output = Path(images), Path(output)
    listing = list_images(images)
    rng = np.random.default_rng(conf.seed)
    start = time.perf_counter()
    names: list[str] = []
    groups: list[Group] = []
    group_image: list[int] = []
    skipped: dict[str, str] = {}
    too_small: dict[str, list[int]] = {}
    for name in track(listing.names, "build localize set"):
        try:
            loaded = read_image(images / name)
        except ImageReadError as exc:
            logger.warning("skipping %s", exc)
            skipped[name] = str(exc)
            continue
        full = Image.fromarray(loaded.rgb)
        made_any = False
        for factor in conf.factors:
            made = make_groups(full, int(factor), conf, rng)
            if not made:
                too_small.setdefault(name, []).append(int(factor))
                continue
            if not made_any:
                names.append(name)
                made_any = True
            groups += made
            group_image += [len(names) - 1] * len(made)
    if not groups:
        raise SfmkitError(
            f"no patch group fits in the images of {images}: at factor f an image needs a short side of "
            f"at least {int(conf.box_min * conf.context * _WINDOW_GROWTH)} x f pixels; use smaller "
            "--factors or larger images"
        )
    if too_small:
        logger.info(
            "%d image(s) too small for some factors: %s", len(too_small), dict(list(too_small.items())[:5])
        )
    sample_group = np.concatenate([np.full(len(g.targets), i, np.int32) for i, g in enumerate(groups)])
    samples = {
        "group": sample_group,
        "box": np.concatenate([np.array(g.boxes, np.float32) for g in groups]),
        "box_full": np.concatenate([np.array(g.boxes_full, np.float32) for g in groups]),
        "band": np.concatenate([np.array(g.bands, np.int8) for g in groups]),
    }
    table = {
        "image": np.array(group_image, np.int32),
        "factor": np.array([g.factor for g in groups], np.int16),
        "window": np.array([g.window for g in groups], np.float32),
    }
    per_factor = {str(f): int((table["factor"] == f).sum()) for f in conf.factors}
    counts = {
        "images": len(names),
        "groups": len(groups),
        "samples": int(len(sample_group)),
        "groups_per_factor": per_factor,
        "skipped_images": skipped,
        "too_small": too_small,
    }
    write_localize_set(
        output,
        names,
        np.stack([g.source for g in groups]),
        np.concatenate([np.stack(g.targets) for g in groups]),
        table,
        samples,
        config=conf_to_json(conf),
        images_dir=str(images.resolve()),
        counts=json.dumps(counts),
    )
    logger.info(
        "%s: %d groups, %d samples from %d images", output, len(groups), len(sample_group), len(names)
    )
    return {**counts, "seconds": round(time.perf_counter() - start, 2), "config": conf_to_dict(conf)}
