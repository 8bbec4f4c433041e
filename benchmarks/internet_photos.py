"""Unordered internet photos without ground truth (e.g. ../shared/datasets/sacre_coeur/mapping):
sfmkit (dense VGG16, with and without keypoint refinement), sfmkit --features sift, ALIKED +
LightGlue (the modern peer) and COLMAP's own SIFT pipeline in the same run.

With no ground truth, each model is compared with COLMAP SIFT's: the mean angle between
relative rotations of the images both registered (alignment-free), and the ratio of focal
lengths. Prints JSON and a markdown table.

    python benchmarks/internet_photos.py ../shared/datasets/sacre_coeur/mapping -o bench_out \
        [--methods "sfmkit dense-vgg16" ...] [--max-size 640 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from pathlib import Path

import numpy as np
import pycolmap

from sfmkit.eval.poses import mean_relative_rotation_error
from sfmkit.features import get_conf, with_max_size
from sfmkit.io.images import list_images
from sfmkit.io.poses import model_poses
from sfmkit.pipelines.methods import colmap_sift_runner, sfmkit_runner
from sfmkit.pipelines.reconstruct import ReconstructConf
from sfmkit.reconstruction.mapping import reconstruction_stats


def focal_ratio(ref: pycolmap.Reconstruction, est: pycolmap.Reconstruction) -> float:
    """Median over common images of est focal / ref focal."""
    ref_f = {i.name: ref.cameras[i.camera_id].mean_focal_length() for i in ref.images.values() if i.has_pose}
    est_f = {i.name: est.cameras[i.camera_id].mean_focal_length() for i in est.images.values() if i.has_pose}
    common = sorted(set(ref_f) & set(est_f))
    return float(np.median([est_f[n] / ref_f[n] for n in common])) if common else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument(
        "--methods", nargs="+", default=None, help="sfmkit rows to run (default: all); COLMAP always runs"
    )
    parser.add_argument(
        "--max-size",
        nargs="*",
        type=int,
        default=[],
        help="further dense VGG16 rows at these extraction sizes ('sfmkit dense-vgg16 <N>px')",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    out = args.output / args.images.parent.name
    names = list_images(args.images).names
    sfmkit_runners = {
        "sfmkit dense-vgg16": sfmkit_runner(ReconstructConf(features=get_conf("dense-vgg16"))),
        "sfmkit dense-vgg16-ms": sfmkit_runner(ReconstructConf(features=get_conf("dense-vgg16-ms"))),
        "sfmkit dense-vgg16 refine none": sfmkit_runner(
            ReconstructConf(features=get_conf("dense-vgg16"), refine="none")
        ),
        "sfmkit dense-vgg16 refine keypoints": sfmkit_runner(  # without the bundle adjustment
            ReconstructConf(features=get_conf("dense-vgg16"), refine="keypoints")
        ),
        "sfmkit sift": sfmkit_runner(ReconstructConf(features=get_conf("sift"))),
        "aliked + lightglue": sfmkit_runner(ReconstructConf(features=get_conf("aliked"))),
    }
    for size in args.max_size:
        conf = ReconstructConf(features=with_max_size(get_conf("dense-vgg16"), size))
        sfmkit_runners[f"sfmkit dense-vgg16 {size}px"] = sfmkit_runner(conf)
    if args.methods is not None:
        args.methods += [f"sfmkit dense-vgg16 {size}px" for size in args.max_size]
    unknown = set(args.methods or []) - set(sfmkit_runners)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose among {sorted(sfmkit_runners)}")
    runners = {"COLMAP sift (pycolmap)": colmap_sift_runner("auto")}
    runners.update({k: v for k, v in sfmkit_runners.items() if args.methods is None or k in args.methods})
    runs = {}
    for label, run in runners.items():
        start = time.perf_counter()
        result = run(args.images, None, out / label.split(" (")[0].replace(" ", "_"), None)
        runs[label] = (result.reconstruction, result.timings, time.perf_counter() - start)

    reference = runs["COLMAP sift (pycolmap)"][0]
    rows = []
    for label, (rec, timings, wall) in runs.items():
        stats = reconstruction_stats(rec, len(names))
        row = {"method": label, "wall_s": round(wall, 1), "timings": timings, **stats}
        if rec is not None and reference is not None:
            row["relative_rotation_vs_colmap_deg"] = round(
                mean_relative_rotation_error(model_poses(reference), model_poses(rec)), 3
            )
            row["focal_ratio_vs_colmap"] = round(focal_ratio(reference, rec), 3)
        rows.append(row)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "internet_photos.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| method | registered | 3D points | track length | reproj. error (px) "
        "| rel. rotation vs COLMAP (deg) | focal / COLMAP's | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r["method"],
            f"{r['registered']}/{r['images']}",
            r.get("points3D", 0),
            r.get("mean_track_length", "-"),
            r.get("mean_reprojection_error_px", "-"),
            r.get("relative_rotation_vs_colmap_deg", "-"),
            r.get("focal_ratio_vs_colmap", "-"),
            r["wall_s"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    table = "\n".join(lines) + "\n"
    (args.output / "internet_photos.md").write_text(table)
    print(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
