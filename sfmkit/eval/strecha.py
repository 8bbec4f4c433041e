"""``evaluate strecha``: camera errors against Strecha ground truth, methods side by side.

Each scene is reconstructed by every method (or a given model is scored), aligned to the
ground truth by a robust similarity on camera centres (RANSAC over minimal sets, then least
squares on the inliers), and scored per camera: position error (metres) and rotation error
(degrees). Writes ``results.json``, ``results.md`` and ``<scene>.png`` (top view).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from sfmkit.errors import SfmkitError
from sfmkit.eval.plots import plot_top_view
from sfmkit.eval.poses import mean_relative_rotation_error, pose_errors
from sfmkit.io.images import list_images
from sfmkit.io.poses import model_poses
from sfmkit.io.strecha import read_scene
from sfmkit.pipelines.methods import MethodResult, Runner
from sfmkit.utils.plots import plot_isolated

logger = logging.getLogger(__name__)


def score_model(scene: Path, rec: pycolmap.Reconstruction | None) -> dict[str, Any]:
    """Per-camera and per-scene errors of ``rec`` against the scene's ground truth."""
    truth = {name: cam.pose for name, cam in read_scene(scene).items()}
    est = {n: p for n, p in (model_poses(rec) if rec is not None else {}).items() if n in truth}
    out: dict[str, Any] = {"registered": len(est), "total": len(truth), "cameras": {}}
    if len(est) < 3:
        out["note"] = "fewer than 3 registered images: no alignment"
        return out
    errors = pose_errors(truth, est)
    summary = errors.summary()
    aligned = errors.alignment.apply(np.stack([est[n].center for n in sorted(est)]))
    out.update(
        position_m=summary["position"],
        rotation_deg=summary["rotation_deg"],
        relative_rotation_deg=mean_relative_rotation_error(truth, est),
        alignment_inliers=len(errors.inliers),
        cameras={
            n: {
                "position_m": errors.position[n],
                "rotation_deg": errors.rotation[n],
                "aligned_center": c.tolist(),
            }
            for n, c in zip(sorted(est), aligned, strict=True)
        },
    )
    return out


def _row(scene: str, method: str, score: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    return {"scene": scene, "method": method, "timings": timings, **score}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Side-by-side table: registered, position and rotation errors, time per stage."""
    lines = [
        "| scene | method | registered | position mean / median / max (mm) | rotation mean / max (deg) "
        "| relative rotation (deg) | time extract / match / verify / map (s) | total (s) | time vs first |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first_total: dict[str, float] = {}
    for r in rows:
        t = r["timings"]
        total = float(t.get("total", sum(v for k, v in t.items() if k != "total")))
        first_total.setdefault(r["scene"], total)
        p, q = r.get("position_m"), r.get("rotation_deg")
        pos = f"{1000 * p['mean']:.1f} / {1000 * p['median']:.1f} / {1000 * p['max']:.1f}" if p else "-"
        rot = f"{q['mean']:.3f} / {q['max']:.3f}" if q else "-"
        rel = f"{r['relative_rotation_deg']:.3f}" if "relative_rotation_deg" in r else "-"
        stages = " / ".join(f"{t.get(s, 0.0):.0f}" for s in ("extract", "match", "verify", "map"))
        ratio = total / first_total[r["scene"]] if first_total[r["scene"]] else float("nan")
        lines.append(
            f"| {r['scene']} | {r['method']} | {r['registered']}/{r['total']} | {pos} | {rot} | {rel} "
            f"| {stages} | {total:.1f} | {ratio:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def check_scene(scene: Path) -> None:
    """Refuse a scene whose ground-truth cameras do not name at least 3 of its images."""
    truth = read_scene(scene)
    names = list_images(Path(scene) / "images").names
    common = set(truth) & set(names)
    if len(common) < 3:
        raise SfmkitError(
            f"{scene}: only {len(common)} of the {len(names)} images in images/ have a ground-truth "
            f"camera in gt_dense_cameras/ (first camera file: {sorted(truth)[0]}.camera, first image: "
            f"{names[0]}); name each camera file <image name>.camera"
        )


def evaluate_strecha(
    scenes: Sequence[Path],
    out_dir: Path,
    runners: dict[str, Runner],
    *,
    intrinsics: bool = False,
    model: Path | None = None,
) -> Path:
    """Evaluate ``runners`` (or one given ``model``) on Strecha-layout ``scenes``.

    Args:
        intrinsics: give every method the scene's ``images/K.txt`` (kept fixed).
        model: score this COLMAP model instead of running methods (one scene only).

    Returns:
        Path of ``results.json``.
    """
    out_dir = Path(out_dir)
    if model is not None and len(scenes) != 1:
        raise SfmkitError("--model scores one model: pass exactly one scene")
    rows: list[dict[str, Any]] = []
    for scene in map(Path, scenes):
        check_scene(scene)  # fails early on a folder that is not a Strecha scene
        results: dict[str, MethodResult] = {}
        if model is not None:
            results["model"] = MethodResult(pycolmap.Reconstruction(model), {}, Path(model))
        else:
            k_file = scene / "images" / "K.txt" if intrinsics else None
            for method, run in runners.items():
                logger.info("%s: running %s", scene.name, method)
                results[method] = run(scene / "images", None, out_dir / scene.name / method, k_file)
        estimates, errors = {}, {}
        for method, result in results.items():
            score = score_model(scene, result.reconstruction)
            rows.append(_row(scene.name, method, score, result.timings))
            estimates[method] = {n: np.array(c["aligned_center"]) for n, c in score["cameras"].items()}
            errors[method] = {n: c["position_m"] for n, c in score["cameras"].items()}
        # the numbers first, so a failed figure cannot lose them
        _write_results(out_dir, intrinsics, rows)
        truth = {n: cam.C for n, cam in read_scene(scene).items()}
        plot_isolated(
            plot_top_view,
            out_dir / f"{scene.name}.png",
            f"{scene.name}: camera centres (top view)",
            truth,
            estimates,
            errors,
        )
    return _write_results(out_dir, intrinsics, rows)


def _write_results(out_dir: Path, intrinsics: bool, rows: list[dict[str, Any]]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps({"intrinsics": intrinsics, "rows": rows}, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table(rows))
    return results_path
