"""``retrieve``: images -> ``global-<tag>.h5`` -> nearest neighbours -> a pairs file.

The pairs file ``pairs-retrieval-<aggregation>-k<K>.txt`` lists each image with its K most
similar images (each unordered pair once); ``sfmkit reconstruct --pairs retrieval:K`` runs
this stage and matches only those pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmkit.features.extract import extract_global
from sfmkit.features.global_descriptors import GlobalConf
from sfmkit.io.h5 import json_attr
from sfmkit.io.images import list_images
from sfmkit.io.pairs import write_pairs
from sfmkit.models.retrieval import load_retrieval_model
from sfmkit.retrieval.search import SearchConf, SearchResult, search
from sfmkit.utils.executor import LOCAL, ExecutorConf
from sfmkit.utils.timing import StageTimer

logger = logging.getLogger(__name__)


def pairs_path(conf: SearchConf, out_dir: Path) -> Path:
    return Path(out_dir) / f"pairs-retrieval-{conf.aggregation}-k{conf.top_k}.txt"


@dataclass
class RetrieveResult:
    """Paths, neighbours, counts and per-stage timings of one ``retrieve`` run."""

    global_file: Path
    pairs_file: Path
    result: SearchResult
    timings: dict[str, float]
    counts: dict[str, Any] = field(default_factory=dict)


def retrieve(
    images: Path,
    out_dir: Path,
    gconf: GlobalConf = GlobalConf(),
    sconf: SearchConf = SearchConf(),
    *,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
    executor: ExecutorConf = LOCAL,
) -> RetrieveResult:
    """Extract global descriptors, search every image against the others, write the pairs.
    ``executor``: where the global descriptors are extracted (the search runs here: it needs
    every descriptor, and streams them in chunks)."""
    timer = StageTimer()
    with timer.stage("global"):
        path = extract_global(
            gconf,
            images,
            out_dir,
            image_names=image_names,
            overwrite=overwrite,
            device=device,
            executor=executor,
        )
    # the images of this run only: the global file may hold more, from earlier runs
    skipped = json_attr(path, "skipped", {}) or {}
    wanted = image_names if image_names is not None else list_images(images).names
    names = [n for n in wanted if n not in skipped]
    with timer.stage("search"):
        model = load_retrieval_model(gconf.weights) if sconf.whitening == "model" else None
        result = search(
            path,
            sconf,
            model_whitening=None if model is None else model.whitening,
            db_names=names,
            workdir=Path(out_dir),
            device=device,
        )
        pairs = result.pairs()
        pairs_file = write_pairs(pairs_path(sconf, out_dir), pairs)
    counts = {
        "images": len(result.database),
        "pairs": len(pairs),
        "extract": json_attr(path, "last_run"),
        "skipped_images": json_attr(path, "skipped", {}),
        "whitening": result.whitening,
    }
    logger.info(
        "%d pairs from %d images (%s, top %d)",
        len(pairs),
        len(result.database),
        sconf.aggregation,
        sconf.top_k,
    )
    return RetrieveResult(path, pairs_file, result, timer.as_dict(), counts)
