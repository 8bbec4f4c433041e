"""Scoring retrieval on labelled scenes: the relevant images of each query and mAP@k.

The protocol of Shen et al. 2018: the ground-truth matches of an image are the images of the
same scene with combined overlap CO >= ``threshold`` (0.5); every image queries all images of
all scenes together (itself excluded). Shared by ``sfmkit evaluate retrieval`` and the
validation curve of ``sfmkit train retrieval``, so both report the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.io.labels import image_folder, read_labels
from sfmkit.models.whitening import Whitening
from sfmkit.retrieval.metrics import mean_average_precision
from sfmkit.retrieval.search import SearchConf, search

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestSet:
    """Test scenes: global names ``<scene>/<image>`` and the relevant set of each."""

    names: list[str]
    relevant: list[set[int]]
    folders: list[tuple[str, Path, list[str]]]  # scene label, image folder, image names


def load_test_set(labels_paths: Sequence[Path], threshold: float = 0.5) -> TestSet:
    """Every image of every labels file; scenes are named after the labels' folders."""
    names: list[str] = []
    relevant: list[set[int]] = []
    folders = []
    used_labels: set[str] = set()
    for path in labels_paths:
        labels = read_labels(path, masks=False)
        label = Path(path).parent.name or Path(path).stem
        while label in used_labels:
            label += "_"
        used_labels.add(label)
        offset = len(names)
        names += [f"{label}/{n}" for n in labels.names]
        co = np.asarray(labels.combined)
        for i in range(len(labels.names)):
            hits = np.flatnonzero(co[i] >= threshold)
            relevant.append({offset + int(j) for j in hits if j != i})
        folders.append((label, image_folder(Path(path), labels), list(labels.names)))
    if not names:
        raise SfmkitError("no test images: give labels files with images")
    return TestSet(names, relevant, folders)


def score_global_file(
    path: Path,
    test: TestSet,
    whitening: Whitening | None,
    aggregations: Sequence[str] = ("mac", "rmac", "prmac"),
    ks: Sequence[int] = (100, 200),
    sconf: SearchConf = SearchConf(),
) -> list[dict[str, Any]]:
    """mAP@k (in %) of each aggregation, searching the global file ``path`` whose names are
    ``test.names``; ``whitening`` is used when ``sconf.whitening`` is ``model``."""
    top = min(max(ks), len(test.names) - 1)
    index = {n: i for i, n in enumerate(test.names)}
    rows = []
    for aggregation in aggregations:
        conf = replace(sconf, aggregation=aggregation, top_k=top, shortlist=max(sconf.shortlist, top))
        start = time.perf_counter()
        found = search(path, conf, model_whitening=whitening, query_names=test.names, db_names=test.names)
        seconds = time.perf_counter() - start
        ranked = np.array([[index[found.database[j]] if j >= 0 else -1 for j in row] for row in found.ids])
        scores = {}
        used = 0
        for k in ks:
            value, used = mean_average_precision(ranked, test.relevant, k)
            scores[f"mAP@{k}"] = round(100 * float(value), 2)
        rows.append(
            {
                "aggregation": aggregation,
                **scores,
                "queries": int(used),
                "whitening": found.whitening,
                "search_s": round(seconds, 2),
            }
        )
    return rows
