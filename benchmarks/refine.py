"""Featuremetric keypoint refinement on scenes with ground-truth cameras (Strecha layout: the
Strecha scenes, or ``sfmkit synth`` renders): the median Sampson error of the verified matches
against the true geometry before and after refinement, per refinement variant (the ablation of
the dense features and the coarse-to-fine passes), with the time and peak memory of each, a
histogram of the keypoint shifts (PNG), and COLMAP SIFT's verified matches for reference.

    python benchmarks/refine.py ../shared/datasets/strecha/fountain-P11 \\
        ../shared/datasets/strecha/Herz-Jesus-P8 -o bench_out/refine \\
        [--variants default intensity-1pass vgg-conv1_2 ...] [--max-size N]

Each variant runs in its own process (so its peak memory is its own). The features and
verified matches are made once per scene with ``reconstruct --refine none``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import time

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pycolmap

from sfmkit.eval.matches import fundamental, sampson_errors, summarize, verified_sampson
from sfmkit.features import with_max_size
from sfmkit.io.h5 import json_attr
from sfmkit.io.pairs import read_pairs
from sfmkit.io.strecha import read_scene
from sfmkit.pipelines.colmap_sift import run_colmap_sift
from sfmkit.pipelines.reconstruct import ReconstructConf, reconstruct
from sfmkit.refinement.refine import RefineConf, refine
from sfmkit.utils.config import replace
from sfmkit.utils.timing import peak_rss_mb

#: name -> RefineConf overrides
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "intensity-1pass": {"levels": (0,)},
    "intensity-w5": {"window": 5},
    "intensity-3pass": {"levels": (512, 1024, 0)},
    "vgg-conv1_2": {"features": "vgg-conv1_2"},
    "vgg-conv1_2-1pass": {"features": "vgg-conv1_2", "levels": (0,)},
    "vgg-conv1_2+conv2_2": {"features": "vgg-conv1_2+conv2_2"},
    "vgg-conv1_2+intensity": {"features": "vgg-conv1_2+intensity"},
}


def _run_variant(args: tuple) -> dict[str, Any]:
    name, features, verified, images, out = args
    conf = replace(RefineConf(), **VARIANTS[name])
    start = time.perf_counter()
    path = refine(conf, features, verified, images, out, overwrite=True, device="cpu")
    return {
        "path": str(path),
        "seconds": round(time.perf_counter() - start, 2),
        "peak_mb": round(peak_rss_mb(), 1),
        "last_run": json_attr(path, "last_run"),
    }


def colmap_sampson(scene: Path, out: Path) -> dict[str, float]:
    """Sampson errors of COLMAP SIFT's geometrically verified matches (its own pipeline)."""
    images = scene / "images"
    names = sorted(p.name for p in images.glob("*.jpg"))
    run_colmap_sift(images, names, out, camera_mode="single")
    cams = read_scene(scene)
    con = sqlite3.connect(out / "database.db")
    ids = {row[0]: row[1] for row in con.execute("SELECT image_id, name FROM images")}
    kpts = {}
    for image_id, rows, cols, data in con.execute("SELECT image_id, rows, cols, data FROM keypoints"):
        kpts[image_id] = np.frombuffer(data, np.float32).reshape(rows, cols)[:, :2].astype(np.float64)
    errors = {}
    for pair_id, rows, data in con.execute("SELECT pair_id, rows, data FROM two_view_geometries"):
        if not rows:
            continue
        id0, id1 = pair_id // 2147483647, pair_id % 2147483647  # COLMAP: id0 < id1
        m = np.frombuffer(data, np.uint32).reshape(rows, 2)
        n0, n1 = ids[id0], ids[id1]
        f = fundamental(cams[n0], cams[n1])
        errors[(n0, n1)] = sampson_errors(f, kpts[id0][m[:, 0]], kpts[id1][m[:, 1]])
    con.close()
    return summarize(errors)


def plot_shifts(path: Path, shifts: dict[str, np.ndarray]) -> None:
    from matplotlib.figure import Figure

    from sfmkit.utils.plots import save_figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for name, s in shifts.items():
        ax.hist(np.clip(s, 0, 30), bins=60, range=(0, 30), histtype="step", label=name)
    ax.set_xlabel("keypoint shift (full-resolution px, clipped at 30)")
    ax.set_ylabel("keypoints")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/refine"))
    parser.add_argument("--variants", nargs="+", default=["default", "intensity-1pass", "vgg-conv1_2"])
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="extraction size (default: the preset's)",
    )
    parser.add_argument("--no-colmap", action="store_true", help="skip COLMAP SIFT's reference figures")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    results: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    for scene in args.scenes:
        out = args.output / scene.name
        base = out / "none"
        conf = ReconstructConf(refine="none")
        conf = replace(conf, features=with_max_size(conf.features, args.max_size))
        reconstruct(conf, scene / "images", base)
        features = next(base.glob("features-*.h5"))
        verified = next(base.glob("verified-*.h5"))
        pairs = read_pairs(base / "pairs-exhaustive.txt")
        cams = read_scene(scene)
        rows = {"none": summarize(verified_sampson(features, verified, pairs, cams))}
        shifts = {}
        for name in args.variants:
            with ctx.Pool(1) as pool:
                run = pool.map(_run_variant, [(name, features, verified, scene / "images", out / name)])[0]
                pool.close()
                pool.join()  # let the worker exit by itself (terminate() makes pycolmap print a trace)
            with h5py.File(run["path"]) as f:
                moved = np.concatenate([f[g]["refinement/shift"][()] for g in f])
            moved = np.linalg.norm(moved, axis=1)
            shifts[name] = moved[moved > 0]
            rows[name] = {
                **summarize(verified_sampson(Path(run["path"]), verified, pairs, cams)),
                "seconds": run["seconds"],
                "peak_mb": run["peak_mb"],
                "shift_median_px": float(np.median(shifts[name])),
            }
        if not args.no_colmap:
            rows["COLMAP sift (its verified matches)"] = colmap_sampson(scene, out / "colmap")
        plot_shifts(args.output / f"{scene.name}-shifts.png", shifts)
        results[scene.name] = rows
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| scene | variant | matches | Sampson median / mean / p90 (px) | within 1 px | time (s) "
        "| peak (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for scene, rows in results.items():
        for name, r in rows.items():
            lines.append(
                f"| {scene} | {name} | {r['matches']} | {r['median_px']:.2f} / {r['mean_px']:.2f} / "
                f"{r['p90_px']:.2f} | {100 * r['within_1px']:.0f}% | {r.get('seconds', '')} "
                f"| {r.get('peak_mb', '')} |"
            )
    (args.output / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
