"""The whole-image localisation protocol of FTFY (``sfmkit evaluate localize``).

Every sample of a held-out localisation set is a query. The close-up is cut at full
resolution from its recorded image and box: the searched image itself, or another view in a
cross-view set. The searched image is reduced by the recorded factor f and cut into tiles of
``tile_ratio`` times the close-up's footprint there (its side / its recorded scale, which
is f in a same-image set),
overlapping by half (:func:`sfmkit.localize.search.source_tiles`). Each method searches all
the tiles. The boxes go back to image pixels, and non-maximum suppression runs across the
tiles. A query succeeds at top-k when one of the first k boxes overlaps the truth by IoU >
``iou``.

Methods (each scored on the same tiles):
- FTFY: the filter generator and the YOLO head;
- the triplet dense sliding window;
- ``ncc``: OpenCV's normalised cross-correlation of the close-up, reduced f times at five
  scales around 1 (0.8-1.25), over the whole reduced image, without learned weights.

Seconds per query include cutting the tiles. ``results.png`` plots the rates per factor.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.eval.plots import plot_per_factor
from sfmkit.io.images import read_image
from sfmkit.io.localize import read_localize_set
from sfmkit.localize.samples import reduce_size
from sfmkit.localize.search import (
    LocalizeConf,
    box_iou_np,
    ftfy_on_tiles,
    merge_tiles,
    nms,
    source_tiles,
    triplet_on_tiles,
)
from sfmkit.models.ftfy import TARGET_SIZE, load_network
from sfmkit.utils.device import resolve_device
from sfmkit.utils.files import write_text_atomic
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

METHODS = ("ftfy", "triplet", "ncc")
NCC_SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)


@dataclass(frozen=True)
class EvalLocalizeConf:
    """Options of ``evaluate localize``: boxes kept, the success IoU, the tiling, how many
    queries at most (0: all), and the sample bands used
    as queries (0: key boxes). ``max_queries`` draws a fixed random subset (seed 0)."""

    top_k: int = 5
    iou: float = 0.7
    tile_ratio: float = 4.5
    max_queries: int = 0
    bands: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.top_k < 1 or not 0 < self.iou < 1 or self.max_queries < 0:
            raise ConfigError("evaluate localize needs top_k >= 1, 0 < iou < 1, max_queries >= 0")


def ncc_search(
    query: np.ndarray, reduced: np.ndarray, scale: float, top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale normalised cross-correlation of ``query`` reduced ``scale`` times (times
    :data:`NCC_SCALES`): boxes in reduced pixels and scores."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - OpenCV ships with the dev extra
        raise SfmkitError("the ncc baseline needs OpenCV: pip install opencv-python-headless") from exc
    gray = cv2.cvtColor(reduced, cv2.COLOR_RGB2GRAY)
    q = cv2.cvtColor(query, cv2.COLOR_RGB2GRAY)
    boxes, scores = [], []
    for s in NCC_SCALES:
        side = max(int(round(q.shape[1] / scale * s)), 4), max(int(round(q.shape[0] / scale * s)), 4)
        if side[0] >= gray.shape[1] or side[1] >= gray.shape[0]:
            continue
        template = cv2.resize(q, side, interpolation=cv2.INTER_AREA)
        response = cv2.matchTemplate(gray, template, cv2.TM_CCOEFF_NORMED)
        flat = np.nan_to_num(response.ravel(), nan=-1.0)
        best = np.argpartition(-flat, min(200, len(flat) - 1))[:200]
        y, x = np.divmod(best, response.shape[1])
        boxes.append(np.column_stack([x, y, x + side[0], y + side[1]]).astype(np.float64))
        scores.append(flat[best])
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0)
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    keep = nms(all_boxes, all_scores, 0.5, top_k)
    return all_boxes[keep], all_scores[keep]


@dataclass(frozen=True)
class Query:
    """One query: the searched image, the factor, the true box there (full-resolution pixels),
    the image and box the close-up is cut from, and the close-up's scale over its footprint in
    the reduced searched image."""

    image: Path
    factor: int
    box: np.ndarray
    query_image: Path
    query_box: np.ndarray
    scale: float


def _queries(set_files: list[Path], conf: EvalLocalizeConf) -> list[Query]:
    """Every query of the sets, grouped by searched image."""
    queries = []
    for path in set_files:
        s = read_localize_set(path)
        folder = Path(str(s.attrs.get("images_dir", "")))
        rows = np.flatnonzero(np.isin(s.samples["band"], conf.bands))
        for r in rows:
            g = int(s.samples["group"][r])
            image = folder / s.images[int(s.groups["image"][g])]
            source_row, query_box, scale = s.query_of(int(r))
            queries.append(
                Query(
                    image,
                    int(s.groups["factor"][g]),
                    np.asarray(s.samples["box_full"][r], np.float64),
                    folder / s.images[source_row],
                    query_box,
                    scale,
                )
            )
    if conf.max_queries and len(queries) > conf.max_queries:
        pick = np.random.default_rng(0).choice(len(queries), conf.max_queries, replace=False)
        queries = [queries[i] for i in sorted(pick)]
    queries.sort(key=lambda q: (str(q.image), str(q.query_image)))
    return queries


def evaluate_localize(
    set_files: list[Path],
    out_dir: Path,
    *,
    ftfy: Path | None,
    triplet: Path | None,
    ncc: bool = True,
    conf: EvalLocalizeConf = EvalLocalizeConf(),
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the protocol (module docs); writes ``results.json`` and ``results.md`` in ``out_dir``."""
    dev = resolve_device(device)
    nets: dict[str, Any] = {}
    if ftfy is not None:
        nets["ftfy"] = load_network("ftfy", ftfy)[0].to(dev)
    if triplet is not None:
        nets["triplet"] = load_network("triplet", triplet)[0].to(dev)
    methods = [*nets, *(["ncc"] if ncc else [])]
    if not methods:
        raise SfmkitError("nothing to evaluate: pass --model and/or --triplet, or keep --ncc")
    queries = _queries(set_files, conf)
    if not queries:
        raise SfmkitError(f"the localisation sets hold no queries of bands {list(conf.bands)}")
    hits: dict[str, dict[int, list[tuple[bool, bool]]]] = {m: defaultdict(list) for m in methods}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    cache: dict[Path, Image.Image] = {}

    def load(path: Path) -> Image.Image:
        if path not in cache:
            if not path.is_file():
                raise SfmkitError(
                    f"{path} (an image of the localisation set) is missing: the set records "
                    "its image folder; rebuild the set or restore the images"
                )
            if len(cache) > 2:
                cache.pop(next(iter(cache)))
            cache[path] = Image.fromarray(read_image(path).rgb)
        return cache[path]

    for q in track(queries, "evaluate localize"):
        image_path, factor, box = q.image, q.factor, q.box
        image = load(image_path)
        query = np.asarray(load(q.query_image).crop(tuple(int(round(v)) for v in q.query_box)), np.uint8)
        side = float(np.sqrt(query.shape[0] * query.shape[1]))
        start = time.perf_counter()
        made = source_tiles(
            image, side / q.scale, factor, LocalizeConf(factors=(factor,), tile_ratio=conf.tile_ratio)
        )
        tile_seconds = time.perf_counter() - start
        if made is None:
            logger.warning(
                "%s: a %d px close-up does not fit at factor %d; skipped", image_path, side, factor
            )
            continue
        tiles, windows = made
        target = np.asarray(
            Image.fromarray(query).resize((TARGET_SIZE, TARGET_SIZE), Image.Resampling.LANCZOS), np.uint8
        )
        footprint = side / float(windows[0, 2] - windows[0, 0])  # window side / tile side
        for method in methods:
            start = time.perf_counter()
            if method == "ftfy":
                found, scores = ftfy_on_tiles(nets["ftfy"], target, tiles, 10)
                boxes, _ = merge_tiles(found, scores, windows, image.size, 0.5, conf.top_k)
            elif method == "triplet":
                found, scores = triplet_on_tiles(nets["triplet"], target, tiles, footprint, 10)
                boxes, _ = merge_tiles(found, scores, windows, image.size, 0.5, conf.top_k)
            else:
                reduced_size = reduce_size(image.size, factor)
                reduced = np.asarray(image.resize(reduced_size, Image.Resampling.LANCZOS), np.uint8)
                found_r, _ = ncc_search(query, reduced, q.scale, conf.top_k)
                boxes = found_r * np.array(
                    [image.width / reduced_size[0], image.height / reduced_size[1]] * 2
                )
            elapsed = time.perf_counter() - start + (tile_seconds if method != "ncc" else 0.0)
            seconds[method].append(elapsed)
            ious = box_iou_np(boxes, box[None]) if len(boxes) else np.zeros(1)
            hits[method][factor].append((bool(ious[0] > conf.iou), bool(ious.max() > conf.iou)))
    return _write(out_dir, methods, hits, seconds, conf, set_files)


def _write(
    out_dir: Path,
    methods: list[str],
    hits: dict[str, dict[int, list[tuple[bool, bool]]]],
    seconds: dict[str, list[float]],
    conf: EvalLocalizeConf,
    set_files: list[Path],
) -> dict[str, Any]:
    results: dict[str, Any] = {"config": conf.__dict__, "sets": [str(p) for p in set_files], "methods": {}}
    lines = [
        f"top-1 / top-{conf.top_k} at IoU > {conf.iou}; seconds per query (median)",
        "",
        "| method | factor | queries | top-1 | top-" + str(conf.top_k) + " | s / query |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        per = {}
        for factor in sorted(hits[m]):
            h = np.array(hits[m][factor])
            per[str(factor)] = {
                "queries": len(h),
                "top1": float(h[:, 0].mean()),
                "topk": float(h[:, 1].mean()),
            }
            lines.append(f"| {m} | {factor} | {len(h)} | {h[:, 0].mean():.3f} | {h[:, 1].mean():.3f} | |")
        every = np.array([x for f in hits[m] for x in hits[m][f]])
        total = {
            "queries": len(every),
            "top1": float(every[:, 0].mean()) if len(every) else float("nan"),
            "topk": float(every[:, 1].mean()) if len(every) else float("nan"),
            "seconds_per_query_median": float(np.median(seconds[m])) if seconds[m] else float("nan"),
            "seconds_per_query_iqr": [float(np.percentile(seconds[m], q)) for q in (25, 75)]
            if seconds[m]
            else [],
        }
        results["methods"][m] = {"per_factor": per, "all": total}
        lines.append(
            f"| **{m}** | all | {total['queries']} | **{total['top1']:.3f}** | **{total['topk']:.3f}** | "
            f"{total['seconds_per_query_median']:.2f} |"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=1))
    write_text_atomic(out_dir / "results.md", "\n".join(lines) + "\n")
    rates = {
        m: {int(f): (v["top1"], v["topk"]) for f, v in results["methods"][m]["per_factor"].items()}
        for m in methods
    }
    plot_per_factor(
        out_dir / "results.png", f"{', '.join(Path(p).name for p in set_files)}", rates, conf.top_k
    )
    return results
