"""``sfmkit evaluate pairs``: pair verification on held-out pair sets. For every model file
(GetNet, GetNet trained jointly, plain Siamese; several seeds each) the accuracy at the model's
own threshold, the ROC-AUC of the distance, and the IoU of the predicted regions against the
sets' regions (overlap-mask boxes; digits: the glyph box) on the positive pairs; then the mean
and spread over the seeds of each variant.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from sfmkit.errors import SfmkitError
from sfmkit.io.pairsets import KINDS, merge_pair_sets, read_pair_set
from sfmkit.models.ftfy import box_iou
from sfmkit.models.getnet import load_getnet, predict_pairs
from sfmkit.utils.files import write_text_atomic
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (higher = positive), by ranks (ties averaged)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(score)  # ties get their mean rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pair_iou(pred_a: np.ndarray, pred_b: np.ndarray, truth: np.ndarray) -> float:
    """Mean IoU of both images' windows (n, 4) against the regions ``truth`` (n, 2, 4)."""
    if not len(truth):
        return float("nan")
    pred = torch.from_numpy(np.stack([pred_a, pred_b], axis=1).astype(np.float32))
    return float(box_iou(pred, torch.from_numpy(truth)).mean())


def evaluate_model(path: Path, data: Any) -> dict[str, Any]:
    """One model file on one (merged) pair set."""
    net, card = load_getnet(path)
    if net.conf.channels != data.channels or net.conf.size != data.size:
        raise SfmkitError(
            f"{path} takes {net.conf.channels}-channel {net.conf.size}-px images, the pair sets hold "
            f"{data.channels}-channel {data.size}-px ones: build them with --size {net.conf.size}"
        )
    start = time.perf_counter()
    out = predict_pairs(net, data.images, data.pairs)
    seconds = time.perf_counter() - start
    same = data.same.astype(bool)
    called = out["distance"] < card["threshold"]
    pos = same & ~np.isnan(data.region).any(axis=(1, 2))
    whole = np.tile(np.array([0, 0, 1, 1], np.float32), (int(pos.sum()), 1))
    per_kind = {
        name: float((called[data.kind == k] == same[data.kind == k]).mean())
        for name, k in KINDS.items()
        if (data.kind == k).any()
    }
    return {
        "model": str(path),
        "variant": card.get("variant", "getnet"),
        "seed": card.get("conf", {}).get("seed"),
        "accuracy": float((called == same).mean()),
        "auc": roc_auc(-out["distance"], same),
        "accuracy_per_kind": per_kind,
        "region_iou": _pair_iou(out["region_a"][pos], out["region_b"][pos], data.region[pos]),
        "whole_image_iou": _pair_iou(whole, whole, data.region[pos]),
        "ms_per_pair": 1000 * seconds / max(len(data), 1),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation and count per variant."""
    out: dict[str, dict[str, Any]] = {}
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {"n": len(mine)}
        for key in ("accuracy", "auc", "region_iou", "whole_image_iou", "ms_per_pair"):
            vals = np.array([r[key] for r in mine], float)
            out[variant][key] = float(np.mean(vals))
            out[variant][f"{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return out


def markdown(summary: dict[str, dict[str, Any]], n_pairs: int) -> str:
    lines = [
        f"Pair verification on {n_pairs} held-out pairs (mean ± std over seeds):",
        "",
        "| variant | seeds | accuracy (%) | ROC-AUC | region IoU | whole-image IoU | ms / pair |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        lines.append(
            f"| {variant} | {s['n']} | {100 * s['accuracy']:.1f} ± {100 * s['accuracy_std']:.1f} | "
            f"{s['auc']:.3f} ± {s['auc_std']:.3f} | {s['region_iou']:.3f} ± {s['region_iou_std']:.3f} | "
            f"{s['whole_image_iou']:.3f} | {s['ms_per_pair']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_pairs(set_files: list[Path], models: list[Path], out_dir: Path) -> dict[str, Any]:
    """Evaluate every model on the merged sets; write ``results.json`` and ``results.md``."""
    if not models:
        raise SfmkitError("evaluate pairs needs at least one --model ('sfmkit train pair-verify')")
    data = merge_pair_sets([read_pair_set(p) for p in set_files])
    rows = [evaluate_model(Path(m), data) for m in track(models, "models")]
    summary = summarise(rows)
    results = {"sets": [str(p) for p in set_files], "pairs": len(data), "models": rows, "summary": summary}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=1))
    write_text_atomic(out_dir / "results.md", markdown(summary, len(data)))
    return results
