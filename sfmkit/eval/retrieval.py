"""``evaluate retrieval``: mAP@k of matchable-image retrieval on labelled test scenes.

The protocol of Shen et al. 2018 (:mod:`sfmkit.retrieval.scoring`): the ground-truth matches
of an image are the images of the same scene with combined overlap CO >= ``threshold`` (0.5);
every image queries all images of all test scenes together (itself excluded); mAP@k for each
k. Images of different scenes never count as matches.

Per model, the global descriptors of every test scene are extracted once (resumable, under
``OUT/<model>/``) and gathered into one file with names ``<scene>/<image>``; every
aggregation is then searched from it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfmkit.errors import SfmkitError
from sfmkit.features.extract import extract_global
from sfmkit.features.global_descriptors import GlobalConf
from sfmkit.io.h5 import H5Reader, ItemWriter, json_attr
from sfmkit.models.retrieval import load_retrieval_model, resolve_model_source
from sfmkit.retrieval.scoring import TestSet, load_test_set, score_global_file
from sfmkit.retrieval.search import SearchConf
from sfmkit.utils.config import conf_to_json

logger = logging.getLogger(__name__)


def gather(test: TestSet, gconf: GlobalConf, out_dir: Path, device: str, overwrite: bool = False) -> Path:
    """Extract every scene's global descriptors and gather them into one file."""
    combined = Path(out_dir) / "global-all.h5"
    parts = []
    for label, folder, image_names in test.folders:
        parts.append(
            (
                label,
                extract_global(
                    gconf,
                    folder,
                    Path(out_dir) / label,
                    image_names=image_names,
                    device=device,
                    overwrite=overwrite,
                ),
            )
        )
    identity = {"parts": json.dumps([str(p) for _, p in parts])}
    writer = ItemWriter(combined, "global", conf_to_json(gconf), overwrite=True, identity=identity)
    with writer:
        for label, part in parts:
            skipped = json_attr(part, "skipped", {}) or {}
            if skipped:
                raise SfmkitError(f"{part}: images could not be read: {sorted(skipped)[:3]}")
            with H5Reader(part, "global") as reader:
                for (name,) in reader.items(1):
                    record = {
                        k: reader.array((name,), k) for k in ("global_descriptor", "regional", "image_size")
                    }
                    writer.write((f"{label}/{name}",), record)
    return combined


def evaluate_retrieval(
    labels_paths: Sequence[Path],
    out_dir: Path,
    models: Sequence[str],
    aggregations: Sequence[str] = ("mac", "rmac", "prmac"),
    *,
    ks: Sequence[int] = (100, 200),
    size: int = 896,
    sconf: SearchConf = SearchConf(),
    threshold: float = 0.5,
    device: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """mAP@k of every model x aggregation; writes ``results.json`` and ``results.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = load_test_set(labels_paths, threshold)
    queries_with_matches = sum(1 for r in test.relevant if r)
    results: dict[str, Any] = {
        "images": len(test.names),
        "scenes": [f[0] for f in test.folders],
        "threshold": threshold,
        "queries_with_matches": queries_with_matches,
        "methods": [],
    }
    whitenings = {model: load_retrieval_model(model).whitening for model in models}  # bad files fail first
    for model in models:
        source = resolve_model_source(model)
        tag = Path(source).stem if source.endswith((".pt", ".pth")) else source
        gconf = GlobalConf(weights=model, max_size=size)
        start = time.perf_counter()
        path = gather(test, gconf, out_dir / tag, device, overwrite)
        extract_seconds = time.perf_counter() - start
        whitening = whitenings[model]
        for row in score_global_file(path, test, whitening, aggregations, ks, sconf):
            results["methods"].append({"model": tag, **row, "extract_s": round(extract_seconds, 1)})
            logger.info(
                "%s %s: %s", tag, row["aggregation"], {k: v for k, v in row.items() if k.startswith("mAP")}
            )
        # written after every model, so a long comparison keeps what it measured
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / "results.md").write_text(results_table(results, ks))
    return results


def results_table(results: dict[str, Any], ks: Sequence[int]) -> str:
    head = "| model | aggregation | " + " | ".join(f"mAP@{k} (%)" for k in ks) + " | whitening | search (s) |"
    lines = [head, "|" + "---|" * (4 + len(ks))]
    for m in results["methods"]:
        cells = [
            m["model"],
            m["aggregation"],
            *(f"{m[f'mAP@{k}']:.1f}" for k in ks),
            m["whitening"],
            f"{m['search_s']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
