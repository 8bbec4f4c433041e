"""Held-out patch benchmarks of the learned keypoints (``sfmkit evaluate patches``).

Patch retrieval (the protocol of Altwaijry et al. 2016, Table 2): a query patch, its true
match (the same 3D point seen by another image) and ``candidates - 1`` patches of other
points of the same file; the candidates are ranked by descriptor distance and top-1 / top-5
accuracy is the share of queries whose true match ranks first / in the first five. Every
descriptor is scored on the same queries and candidates: the learned ones, upright SIFT
(OpenCV's, at the keypoint scale the patch was cut at: patch side = 12 sigma, so on the 64 x
64 patch sigma = 64 / 12) and normalised raw pixels.

Detector: precision-recall AUC (average precision) of keypoint-centred patches against
negatives, each scored by the branch of its side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfmkit.errors import SfmkitError
from sfmkit.io.patches import PatchSet, read_patches
from sfmkit.models.keypoints import DESCRIPTOR_INPUT, describe_patches, load_network, to_input
from sfmkit.train.keypoints import DescriptorData
from sfmkit.utils.device import resolve_device
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

Describer = Callable[[np.ndarray], np.ndarray]


def sift_describer() -> Describer:
    """Upright SIFT descriptors (OpenCV) of (n, 64, 64) patches at the patches' scale."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - cv2 is a dev dependency
        raise SfmkitError("the SIFT baseline needs OpenCV: pip install opencv-python-headless") from exc
    sift = cv2.SIFT_create()
    centre = (DESCRIPTOR_INPUT - 1) / 2
    size = 2 * DESCRIPTOR_INPUT / 12  # OpenCV's keypoint size is twice the scale sigma

    def describe(patches: np.ndarray) -> np.ndarray:
        out = np.zeros((len(patches), 128), np.float32)
        for i, patch in enumerate(patches):
            _, desc = sift.compute(np.ascontiguousarray(patch), [cv2.KeyPoint(centre, centre, size, 0)])
            if desc is not None and len(desc):
                out[i] = desc[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-8)

    return describe


def pixel_describer(patches: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32 x 32 pixels (normalised cross-correlation as a distance)."""
    x = (
        patches.reshape(len(patches), 32, 2, 32, 2)
        .astype(np.float32)
        .mean(axis=(2, 4))
        .reshape(len(patches), -1)
    )
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def network_describer(source: str, device: torch.device) -> tuple[Describer, dict[str, Any]]:
    net, card = load_network("descriptor", source)
    net = net.to(device)

    return lambda patches: describe_patches(net, patches, device), card


def retrieval_queries(
    data: DescriptorData, queries: int, candidates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(Q,) query rows and (Q, candidates) candidate rows, the true match in column 0."""
    if len(data.tracks) < candidates:
        raise SfmkitError(
            f"only {len(data.tracks)} points have two views; need at least --candidates {candidates}"
        )
    track_of = np.empty(len(data.patches), np.int64)
    for t, rows in enumerate(data.tracks):
        track_of[rows] = t
    in_track = np.concatenate(data.tracks)
    q_rows = np.zeros(queries, np.int64)
    c_rows = np.zeros((queries, candidates), np.int64)
    for q in range(queries):
        t = rng.integers(len(data.tracks))
        query, match = rng.choice(data.tracks[t], 2, replace=False)
        others = in_track[track_of[in_track] != t]
        q_rows[q] = query
        c_rows[q, 0] = match
        c_rows[q, 1:] = rng.choice(others, candidates - 1, replace=False)
    return q_rows, c_rows


def retrieval_accuracy(desc: np.ndarray, q_rows: np.ndarray, c_rows: np.ndarray) -> dict[str, float]:
    """Top-1 / top-5 accuracy and the mean rank of the true match (0 = first)."""
    dist = np.linalg.norm(desc[c_rows] - desc[q_rows][:, None], axis=2)
    rank = (dist[:, 1:] < dist[:, :1]).sum(axis=1)
    return {
        "top1": float(np.mean(rank == 0)),
        "top5": float(np.mean(rank < 5)),
        "mean_rank": float(rank.mean()),
    }


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision; ties broken pessimistically)."""
    order = np.lexsort((labels, -scores))  # among equal scores negatives come first
    hits = labels[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def detector_scores(
    source: str, pset: PatchSet, rows_per_kind: dict[str, np.ndarray], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (1 positive, 0 negative) of the chosen rows of each kind."""
    net, _ = load_network("detector", source)
    net = net.to(device)
    scores, labels = [], []
    with torch.inference_mode():
        for kind, label in (("positives", 1), ("negatives", 0)):
            table = getattr(pset, kind)
            rows = rows_per_kind[kind]
            for size in np.unique(table["size"][rows]):
                sel = rows[table["size"][rows] == size]
                patches = pset.patches[int(size)][table["index"][sel]]
                for chunk in np.array_split(patches, max(1, len(patches) // 256)):
                    scores.append(net(to_input(chunk, device), int(size)).cpu().numpy())
                    labels.append(np.full(len(chunk), label))
    return np.concatenate(scores), np.concatenate(labels)


def evaluate_patches(
    files: list[Path],
    output: Path,
    *,
    descriptors: list[str],
    detectors: list[str],
    queries: int = 1000,
    candidates: int = 100,
    detector_samples: int = 5000,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Run both benchmarks on every patches file; writes ``results.json`` and ``results.md``."""
    if candidates < 6:
        raise SfmkitError("--candidates must be at least 6 (top-5 accuracy)")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    describers: dict[str, Describer] = {}
    for source in descriptors:
        describers[f"multiscale-kp descriptor ({source})"], _ = network_describer(source, dev)
    describers["SIFT (upright, OpenCV)"] = sift_describer()
    describers["raw pixels (NCC)"] = pixel_describer
    for source in detectors:
        load_network("detector", source)  # fail before any work when a file is wrong
    results: dict[str, Any] = {"files": {}, "queries": 0, "candidates": candidates}
    for path in track(files, "evaluate patches"):
        pset = read_patches(path)
        rng = np.random.default_rng(seed)
        data = DescriptorData.from_sets([pset])
        q_rows, c_rows = retrieval_queries(data, queries, candidates, rng)
        used = np.unique(np.concatenate([q_rows, c_rows.ravel()]))
        remap = np.full(len(data.patches), -1, np.int64)
        remap[used] = np.arange(len(used))
        entry: dict[str, Any] = {
            "points": len(data.tracks),
            "queries": queries,
            "retrieval": {},
            "detector": {},
        }
        for label, describe in describers.items():
            desc = describe(data.patches[used])
            entry["retrieval"][label] = retrieval_accuracy(desc, remap[q_rows], remap[c_rows])
            logger.info("%s %s: %s", Path(path).name, label, entry["retrieval"][label])
        rows = {
            kind: np.sort(rng.choice(len(t["size"]), min(detector_samples, len(t["size"])), replace=False))
            for kind, t in (("positives", pset.positives), ("negatives", pset.negatives))
        }
        for source in detectors:
            scores, labels = detector_scores(source, pset, rows, dev)
            entry["detector"][f"multiscale-kp detector ({source})"] = {
                "pr_auc": average_precision(scores, labels),
                "positives": int(labels.sum()),
                "negatives": int((1 - labels).sum()),
            }
        entry["detector"]["chance"] = {
            "pr_auc": float(len(rows["positives"]) / sum(len(r) for r in rows.values()))
        }
        results["files"][str(path)] = entry
        results["queries"] += queries
        _write(output, results)
    return results


def _write(output: Path, results: dict[str, Any]) -> None:
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"## Patch retrieval: 1 true match among {results['candidates']} patches",
        "",
        "| patches | descriptor | top-1 | top-5 | mean rank |",
        "|---|---|---|---|---|",
    ]
    for path, entry in results["files"].items():
        for label, r in entry["retrieval"].items():
            top = f"{100 * r['top1']:.1f}% | {100 * r['top5']:.1f}%"
            lines.append(f"| {Path(path).stem} | {label} | {top} | {r['mean_rank']:.2f} |")
    lines += [
        "",
        "## Detector: precision-recall AUC, keypoint patches vs negatives",
        "",
        "| patches | detector | PR AUC |",
        "|---|---|---|",
    ]
    for path, entry in results["files"].items():
        for label, r in entry["detector"].items():
            lines.append(f"| {Path(path).stem} | {label} | {100 * r['pr_auc']:.1f} |")
    (output / "results.md").write_text("\n".join(lines) + "\n")
