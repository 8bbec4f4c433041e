"""``evaluate aachen``: the day-night protocol of Widya et al. on Aachen-style subsets.

A subset folder holds ``images/`` (day images and night queries), ``night.txt`` (the query
names), reference poses (``poses.txt``: ``name qw qx qy qz tx ty tz`` in cam_from_world, or a
COLMAP model in ``reference/``) and optionally ``K.txt``. Each subset is reconstructed by each
method; the model is aligned to the reference with the day cameras only (robust similarity on
centres); each night query gets a position error (reference units, metres) and an angular
error acos((trace(R_ref R_est^T) - 1) / 2). A query that is not registered is a failure.

sfmkit runs its stages once over the union of all subsets' images (a day image shared by
several subsets, e.g. through ``make-night``'s links, is extracted and matched once) and maps
each subset separately; COLMAP's pipeline runs per subset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from sfmkit.errors import SfmkitError
from sfmkit.eval.plots import plot_cumulative
from sfmkit.eval.poses import pose_errors
from sfmkit.features.extract import extract
from sfmkit.geometry.verify import verify
from sfmkit.io.images import list_images
from sfmkit.io.pairs import exhaustive_pairs, write_pairs
from sfmkit.io.poses import Pose, model_poses, read_reference
from sfmkit.matching.match import match
from sfmkit.pipelines.methods import Runner
from sfmkit.pipelines.reconstruct import ReconstructConf
from sfmkit.reconstruction.mapping import map_images
from sfmkit.refinement.bundle import bundle_adjust
from sfmkit.refinement.refine import refine
from sfmkit.utils.plots import plot_isolated
from sfmkit.utils.timing import StageTimer

logger = logging.getLogger(__name__)

#: (metres, degrees): Widya et al.'s thresholds, then Aachen v1.1's.
THRESHOLDS = ((0.5, 10.0), (1.0, 10.0), (5.0, 10.0), (10.0, 10.0), (20.0, 10.0))
THRESHOLDS_V11 = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


@dataclass(frozen=True)
class Subset:
    """Attributes: name; images folder; all image names; night query names; reference poses
    by image name; known intrinsics file or None."""

    name: str
    images: Path
    names: list[str]
    night: list[str]
    reference: dict[str, Pose]
    intrinsics: Path | None


def load_subsets(root: Path) -> list[Subset]:
    """Every sub-folder of ``root`` holding a ``night.txt`` (folders starting with ``_`` are skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise SfmkitError(f"{root} is not a folder of subsets")
    subsets = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        night_file = folder / "night.txt"
        if not night_file.is_file():
            continue
        night = [line.strip() for line in night_file.read_text().splitlines() if line.strip()]
        names = list_images(folder / "images").names
        ref_path = folder / "poses.txt" if (folder / "poses.txt").is_file() else folder / "reference"
        reference = read_reference(ref_path)
        unknown = [n for n in night if n not in names or n not in reference]
        if unknown:
            raise SfmkitError(f"{folder}: night images without an image file or reference pose: {unknown}")
        k = folder / "K.txt"
        subsets.append(
            Subset(folder.name, folder / "images", names, night, reference, k if k.is_file() else None)
        )
    if not subsets:
        raise SfmkitError(f"{root} holds no subset (a folder with images/, night.txt and poses.txt)")
    return subsets


def score_queries(
    subset: Subset, rec: pycolmap.Reconstruction | None, rename: dict[str, str]
) -> dict[str, Any]:
    """Errors of the night queries of ``subset`` in ``rec`` (model image names -> subset names
    through ``rename``)."""
    est = {rename.get(n, n): p for n, p in (model_poses(rec) if rec is not None else {}).items()}
    est = {n: p for n, p in est.items() if n in subset.reference}
    day = set(subset.names) - set(subset.night)
    queries: dict[str, dict[str, Any]] = {q: {"registered": q in est} for q in subset.night}
    try:
        errors = pose_errors(subset.reference, est, align_on=day)
    except ValueError as exc:
        for q in queries.values():
            q["note"] = str(exc)
        return queries
    for q, entry in queries.items():
        if entry["registered"]:
            entry.update(position_m=errors.position[q], angle_deg=errors.rotation[q])
    return queries


def _within(queries: list[dict[str, Any]], metres: float, degrees: float) -> float:
    ok = [
        q.get("position_m") is not None and q["position_m"] <= metres and q["angle_deg"] <= degrees
        for q in queries
    ]
    return 100.0 * float(np.mean(ok)) if ok else float("nan")


def summarize(queries: list[dict[str, Any]]) -> dict[str, Any]:
    """Registered percentage and percentages within the protocol's thresholds."""
    return {
        "queries": len(queries),
        "registered_pct": 100.0 * float(np.mean([q["registered"] for q in queries]))
        if queries
        else float("nan"),
        "within": {f"{m}m,{d}deg": _within(queries, m, d) for m, d in THRESHOLDS},
        "within_v1.1": {f"{m}m,{d}deg": _within(queries, m, d) for m, d in THRESHOLDS_V11},
    }


def _pool_images(subsets: Sequence[Subset], pool: Path) -> dict[str, dict[str, str]]:
    """Link every distinct image (by resolved path) of all subsets into ``pool``.

    Returns:
        subset name -> {name in the subset: name in the pool}.
    """
    if pool.exists():
        shutil.rmtree(pool)
    pool.mkdir(parents=True)
    by_file: dict[Path, str] = {}
    taken: set[str] = set()
    mapping: dict[str, dict[str, str]] = {}
    for subset in subsets:
        mapping[subset.name] = {}
        for name in subset.names:
            real = (subset.images / name).resolve()
            if real not in by_file:
                pooled = name if name not in taken else f"{subset.name}/{name}"
                (pool / pooled).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(real, pool / pooled)
                by_file[real] = pooled
                taken.add(pooled)
            mapping[subset.name][name] = by_file[real]
    return mapping


def run_sfmkit_subsets(
    conf: ReconstructConf,
    subsets: Sequence[Subset],
    out_dir: Path,
    use_intrinsics: bool,
    label: str = "sfmkit",
) -> tuple[dict[str, tuple[pycolmap.Reconstruction | None, dict[str, str]]], dict[str, float]]:
    """sfmkit on every subset, sharing extraction and matching across subsets (and across
    configurations: stage files are named by preset); models go to ``<subset>/<label>``.

    Returns:
        subset name -> (model, model image name -> subset image name), and seconds per stage.
    """
    work = out_dir / "_sfmkit"
    mapping = _pool_images(subsets, work / "pool")
    matcher, verification, refinement = conf.stage_confs()
    timer = StageTimer()
    all_names = sorted({n for m in mapping.values() for n in m.values()})
    with timer.stage("extract"):
        feats = extract(conf.features, work / "pool", work, image_names=all_names)
    results = {}
    for subset in subsets:
        names = sorted(mapping[subset.name].values())
        pairs = write_pairs(work / f"pairs-{subset.name}.txt", exhaustive_pairs(names))
        with timer.stage("match"):
            matches = match(matcher, feats, pairs, work)
        with timer.stage("verify"):
            verified = verify(verification, matches, pairs, work, features=feats)
        keypoints = feats
        if refinement is not None:
            with timer.stage("refine"):
                keypoints = refine(
                    refinement, feats, verified, work / "pool", work / subset.name, pairs=pairs
                )
        k = subset.intrinsics if use_intrinsics else None
        camera = dataclasses.replace(conf.mapping.camera, intrinsics=None if k is None else str(k))
        map_conf = dataclasses.replace(conf.mapping, camera=camera)
        with timer.stage("map"):
            try:
                mapped = map_images(
                    map_conf,
                    work / "pool",
                    verified,
                    pairs,
                    out_dir / subset.name / label,
                    features=keypoints,
                )
                model = mapped.reconstruction
                bundle = conf.bundle_conf()
                if bundle is not None and model is not None:  # the default's last step, as in reconstruct
                    model = bundle_adjust(
                        bundle, mapped.path, work / "pool", out_dir / subset.name / f"{label}-ba"
                    ).reconstruction
            except SfmkitError as exc:
                logger.warning("%s: sfmkit could not reconstruct: %s", subset.name, exc)
                model = None
        results[subset.name] = (model, {pooled: local for local, pooled in mapping[subset.name].items()})
    return results, timer.as_dict()


def evaluate_aachen(
    root: Path,
    out_dir: Path,
    methods: Sequence[str],
    conf: ReconstructConf,
    colmap: Runner | None = None,
    *,
    use_intrinsics: bool = False,
    variants: Mapping[str, ReconstructConf] | None = None,
) -> Path:
    """Run the protocol for ``methods`` (``sfmkit`` with ``conf``, ``colmap-sift``, or a name
    of ``variants``: sfmkit with that configuration, e.g. the ALIKED + LightGlue peer);
    returns results.json."""
    variants = dict(variants or {})
    out_dir = Path(out_dir)
    subsets = load_subsets(root)
    if use_intrinsics and (missing := [s.name for s in subsets if s.intrinsics is None]):
        raise SfmkitError(
            f"{root}: subset(s) {', '.join(missing[:5])} have no K.txt (their images do not share one "
            "calibration); run without --intrinsics"
        )
    per_method: dict[str, dict[str, Any]] = {}
    timings: dict[str, Any] = {}
    for method in methods:
        start = time.perf_counter()
        queries: dict[str, Any] = {}
        if method == "sfmkit" or method in variants:
            run_conf = variants.get(method, conf)
            models, stages = run_sfmkit_subsets(run_conf, subsets, out_dir, use_intrinsics, label=method)
            timings[f"{method}_stages"] = stages
            for subset in subsets:
                model, rename = models[subset.name]
                queries[subset.name] = score_queries(subset, model, rename)
        elif method == "colmap-sift":
            if colmap is None:
                raise ValueError("a COLMAP runner is needed for colmap-sift")
            for subset in subsets:
                k = subset.intrinsics if use_intrinsics else None
                result = colmap(subset.images, subset.names, out_dir / subset.name / "colmap-sift", k)
                queries[subset.name] = score_queries(subset, result.reconstruction, {})
        else:
            raise SfmkitError(f"unknown method {method!r}")
        timings[method] = round(time.perf_counter() - start, 3)
        flat = [q for per_subset in queries.values() for q in per_subset.values()]
        per_method[method] = {"summary": summarize(flat), "queries": queries}
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "subsets": [s.name for s in subsets],
        "intrinsics": use_intrinsics,
        "timings_s": timings,
        "methods": per_method,
    }
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_summary(per_method, timings))
    thresholds = np.logspace(-3, np.log10(20), 120)
    curves = {}
    for method, data in per_method.items():
        flat = [q for per_subset in data["queries"].values() for q in per_subset.values()]
        curves[method] = (thresholds, np.array([_within(flat, t, 10.0) for t in thresholds]))
    plot_isolated(
        plot_cumulative,
        out_dir / "curves.png",
        f"night queries localised (angle <= 10 deg), {Path(root).name}",
        curves,
        "position error threshold (m)",
    )
    return path


def markdown_summary(per_method: dict[str, dict[str, Any]], timings: dict[str, Any]) -> str:
    head_t = " | ".join(f"{m}m, {d}°" for m, d in THRESHOLDS)
    head_v = " | ".join(f"{m}m, {d}°" for m, d in THRESHOLDS_V11)
    lines = [
        f"| method | queries | registered | {head_t} | v1.1: {head_v} | time (s) |",
        "|---|---|---|" + "---|" * (len(THRESHOLDS) + len(THRESHOLDS_V11)) + "---|",
    ]
    for method, data in per_method.items():
        s = data["summary"]
        cells = [f"{v:.1f}%" for v in s["within"].values()] + [f"{v:.1f}%" for v in s["within_v1.1"].values()]
        lines.append(
            f"| {method} | {s['queries']} | {s['registered_pct']:.1f}% | "
            + " | ".join(cells)
            + f" | {timings[method]:.0f} |"
        )
    return "\n".join(lines) + "\n"
