"""Two-view geometry against exact cameras: what a global mapper is given.

For every database (sfmkit's map stage and COLMAP SIFT both write a COLMAP ``database.db``),
a sample of its verified pairs is compared with a rendered scene's ground truth:

- the median Sampson error of each pair's inliers under the true epipolar geometry; a pair
  whose median is above ``--wrong-px`` is counted as a wrong pair (its matches do not belong
  to one scene point each), and the true distance between its two camera centres is reported;
- the relative rotation and translation direction that the pair's inliers give with the true
  calibration (pycolmap's essential-matrix RANSAC), against the true relative pose.

With ``--model LABEL=MODEL`` it also reports the relative rotations between the cameras of each
sampled pair in a finished model (how far a mapper's neighbouring cameras are from each other's
true orientation, free of any alignment).

    python benchmarks/twoview.py SCENE --database sfmkit=RUN/sfm/database.db \\
        --database "COLMAP SIFT=SIFT/database.db" [--model global=RUN/sfm] [--pairs 1500]

SCENE is a ``sfmkit synth`` output (its ``model/`` holds the exact cameras). Prints JSON lines
and a markdown table.
"""

from __future__ import annotations

import argparse
import json

# before pycolmap (see sfmkit/__init__.py)
import zlib  # noqa: F401
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from sfmkit.eval.matches import fundamental_from_pose, sampson_errors
from sfmkit.eval.poses import rotation_error_deg


def _relative(a: pycolmap.Image, b: pycolmap.Image) -> tuple[np.ndarray, np.ndarray]:
    """True rotation and unit translation of camera b from camera a."""
    rel = b.cam_from_world() * a.cam_from_world().inverse()
    t = np.asarray(rel.translation)
    return rel.rotation.matrix(), t / np.linalg.norm(t)


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


def sample_pairs(db: pycolmap.Database, n: int, seed: int) -> tuple[list[tuple[str, str]], list[Any]]:
    """Up to ``n`` verified pairs of ``db`` (names) and their two-view geometries."""
    ids, geometries = db.read_two_view_geometries()
    names = {im.image_id: im.name for im in db.read_all_images()}
    keep = [i for i, g in enumerate(geometries) if len(g.inlier_matches) > 0]
    chosen = np.random.default_rng(seed).choice(keep, size=min(n, len(keep)), replace=False)
    pairs = []
    for i in chosen:
        a, b = pycolmap.pair_id_to_image_pair(int(ids[i]))
        pairs.append((names[a], names[b]))
    return pairs, [geometries[i] for i in chosen]


def database_errors(
    db_path: Path, truth: pycolmap.Reconstruction, n: int, seed: int, wrong_px: float
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Sampson, relative-rotation and translation-direction errors of sampled verified pairs."""
    by_name = {im.name: im for im in truth.images.values()}
    db = pycolmap.Database.open(str(db_path))
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        pairs, geometries = sample_pairs(db, n, seed)
        keypoints: dict[str, np.ndarray] = {}
        rows = []
        for (a, b), geometry in zip(pairs, geometries, strict=True):
            for name in (a, b):
                if name not in keypoints:
                    keypoints[name] = db.read_keypoints(ids[name])[:, :2].astype(np.float64)
            ia, ib = by_name[a], by_name[b]
            ca, cb = truth.cameras[ia.camera_id], truth.cameras[ib.camera_id]
            r, t = _relative(ia, ib)
            f = fundamental_from_pose(ca.calibration_matrix(), cb.calibration_matrix(), r, t)
            m = geometry.inlier_matches
            p0, p1 = keypoints[a][m[:, 0]], keypoints[b][m[:, 1]]
            row = {
                "inliers": len(m),
                "sampson_px": float(np.median(sampson_errors(f, p0, p1))),
                "distance": float(np.linalg.norm(ia.projection_center() - ib.projection_center())),
            }
            estimate = pycolmap.estimate_essential_matrix(p0, p1, ca, cb)
            if estimate is not None:
                rel = estimate["cam2_from_cam1"]
                row["rotation_deg"] = rotation_error_deg(r, rel.rotation.matrix())
                row["direction_deg"] = _angle(t, np.asarray(rel.translation))
            rows.append(row)
    finally:
        db.close()
    return summarize(rows, wrong_px), pairs


def _percentiles(values: list[float]) -> list[float]:
    """50th and 90th percentiles, rounded (empty for no values)."""
    return [round(float(v), 2) for v in np.percentile(values, [50, 90])] if values else []


def summarize(rows: list[dict[str, Any]], wrong_px: float) -> dict[str, Any]:
    """Percentiles over pairs, split into right and wrong pairs by their Sampson error."""
    sampson = np.array([r["sampson_px"] for r in rows])
    wrong = sampson > wrong_px

    out: dict[str, Any] = {
        "pairs": len(rows),
        "wrong_share": round(float(wrong.mean()), 3),
        "sampson_px_p50_p90": _percentiles(list(sampson)),
    }
    for label, sel in (("right", ~wrong), ("wrong", wrong)):
        part = [r for r, s in zip(rows, sel, strict=True) if s]
        out[label] = {
            "pairs": len(part),
            "inliers_p50_p90": _percentiles([r["inliers"] for r in part]),
            "rotation_deg_p50_p90": _percentiles([r["rotation_deg"] for r in part if "rotation_deg" in r]),
            "direction_deg_p50_p90": _percentiles([r["direction_deg"] for r in part if "direction_deg" in r]),
            "distance_p50_p90": _percentiles([r["distance"] for r in part]),
        }
    return out


def model_relative_rotations(
    model: Path, truth: pycolmap.Reconstruction, pairs: list[tuple[str, str]]
) -> dict[str, Any]:
    """Relative-rotation errors between the cameras of ``pairs`` in a finished model."""
    rec = pycolmap.Reconstruction(str(model))
    est = {im.name: im for im in rec.images.values() if im.has_pose}
    by_name = {im.name: im for im in truth.images.values()}
    errors = []
    for a, b in pairs:
        if a in est and b in est:
            r_true, _ = _relative(by_name[a], by_name[b])
            r_est = (est[b].cam_from_world() * est[a].cam_from_world().inverse()).rotation.matrix()
            errors.append(rotation_error_deg(r_true, r_est))
    focal = [round(float(c.mean_focal_length()), 1) for c in rec.cameras.values()][:3]
    return {
        "pairs": len(errors),
        "rotation_deg_p50_p90": _percentiles(errors),
        "focal_px": focal,
    }


def _labelled(values: list[str]) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        label, _, path = v.partition("=")
        out.append((label, Path(path)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scene", type=Path, help="a sfmkit synth output (model/ holds the exact cameras)")
    parser.add_argument("--database", action="append", default=[], help="LABEL=database.db (repeatable)")
    parser.add_argument("--model", action="append", default=[], help="LABEL=COLMAP model (repeatable)")
    parser.add_argument("--pairs", type=int, default=1500, help="verified pairs sampled per database")
    parser.add_argument("--wrong-px", type=float, default=4.0, help="median Sampson error of a wrong pair")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truth = pycolmap.Reconstruction(str(args.scene / "model"))
    gt_focal = [round(float(c.mean_focal_length()), 1) for c in truth.cameras.values()][:3]
    print(
        "| database | pairs | wrong pairs | right pairs: rel. rotation p50 / p90 (deg) "
        "| direction p50 / p90 (deg) | wrong pairs: inliers p50 | camera distance p50 (right / wrong) |"
    )
    print("|---|---|---|---|---|---|---|")
    sampled: list[tuple[str, str]] = []
    for label, path in _labelled(args.database):
        result, pairs = database_errors(path, truth, args.pairs, args.seed, args.wrong_px)
        sampled = sampled or pairs
        print(json.dumps({"database": label, **result}))
        right, wrong = result["right"], result["wrong"]
        print(
            f"| {label} | {result['pairs']} | {100 * result['wrong_share']:.1f}% "
            f"| {' / '.join(map(str, right['rotation_deg_p50_p90']))} "
            f"| {' / '.join(map(str, right['direction_deg_p50_p90']))} "
            f"| {(wrong['inliers_p50_p90'] or ['-'])[0]} "
            f"| {(right['distance_p50_p90'] or ['-'])[0]} / {(wrong['distance_p50_p90'] or ['-'])[0]} |"
        )
    for label, path in _labelled(args.model):
        result = model_relative_rotations(path, truth, sampled)
        print(json.dumps({"model": label, "true_focal_px": gt_focal, **result}))


if __name__ == "__main__":
    main()
