"""Does ``sfmkit map`` give the same model on the same inputs? Runs it N times into fresh
folders (subprocesses, so nothing is shared between runs) and compares the models.

    python benchmarks/determinism.py IMAGES -o bench_out/determinism [--runs 20] [--threads -1 1] \
        [--max-size 384] [--image-list list.txt]

Reconstructs IMAGES twice into fresh folders (``sfmkit reconstruct``) and compares every
dataset of their stage files; then maps the verified matches ``--runs`` times per thread
count. Prints JSON and a table: distinct models, registered images and 3D points (min-max),
and the largest difference of camera centres and points between any run and the first,
without alignment (the runs share the gauge: same initial pair and seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from pathlib import Path

import h5py
import numpy as np
import pycolmap


def sfmkit(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sfmkit", "-q", "--no-progress", *args], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"sfmkit {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def summary(model: Path) -> dict:
    rec = pycolmap.Reconstruction(model)
    centres = {img.name: np.asarray(img.projection_center()) for img in rec.images.values() if img.has_pose}
    points = (
        np.array(sorted(tuple(p.xyz) for p in rec.points3D.values()))
        if rec.num_points3D()
        else np.zeros((0, 3))
    )
    digest = hashlib.sha1()
    for name in sorted(centres):
        digest.update(name.encode() + np.round(centres[name], 9).tobytes())
    digest.update(np.round(points, 9).tobytes())
    return {
        "registered": len(centres),
        "points": len(points),
        "sha1": digest.hexdigest(),
        "centres": centres,
        "xyz": points,
    }


def compare(first: dict, other: dict) -> tuple[float, float]:
    """Largest camera-centre difference and, when the point counts agree, largest point
    difference (nan otherwise)."""
    common = sorted(set(first["centres"]) & set(other["centres"]))
    dc = max(
        (float(np.linalg.norm(first["centres"][n] - other["centres"][n])) for n in common),
        default=float("nan"),
    )
    dp = (
        float(np.abs(first["xyz"] - other["xyz"]).max())
        if first["xyz"].shape == other["xyz"].shape and len(first["xyz"])
        else float("nan")
    )
    return dc, dp


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def stage_files_equal(a: Path, b: Path) -> dict:
    """Datasets of the stage files of two runs, and those that differ."""
    total, differing = 0, []
    for path in sorted(a.glob("*.h5")):
        with h5py.File(path, "r") as fa, h5py.File(b / path.name, "r") as fb:
            for name in _datasets(fa):
                total += 1
                if name not in fb or not np.array_equal(fa[name][()], fb[name][()]):
                    differing.append(f"{path.name}:{name}")
    return {"datasets": total, "differing": len(differing), "first_differing": differing[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[-1, 1])
    parser.add_argument("--max-size", type=int, default=384)
    parser.add_argument("--image-list", type=Path)
    args = parser.parse_args()
    base = args.output / "base"
    extra = ["--image-list", str(args.image_list)] if args.image_list else []
    twin = args.output / "base-again"
    for out in (base, twin):
        if out.exists():
            shutil.rmtree(out)
        sfmkit("reconstruct", str(args.images), "-o", str(out), "--max-size", str(args.max_size), *extra)
    stages = stage_files_equal(base, twin)
    print(f"stage files of two reconstruct runs: {stages}", file=sys.stderr)
    report = json.loads((base / "report.json").read_text())["reconstruct"]
    verified, refined = report["outputs"]["verified"], report["outputs"]["refined"]
    pairs = report["inputs"]["pairs"]
    rows = []
    for threads in args.threads:
        runs = []
        for i in range(args.runs):
            out = args.output / f"threads{threads}" / f"run{i:02d}"
            if out.exists():
                shutil.rmtree(out)
            feats = ["--features", refined] if refined else []
            sfmkit(
                "map",
                str(args.images),
                verified,
                "--pairs",
                pairs,
                "-o",
                str(out),
                "--num-threads",
                str(threads),
                *feats,
            )
            runs.append(summary(out))
            print(
                f"threads {threads} run {i}: {runs[-1]['registered']} images, {runs[-1]['points']} points",
                file=sys.stderr,
            )
        diffs = [compare(runs[0], r) for r in runs[1:]]
        rows.append(
            {
                "threads": threads,
                "runs": len(runs),
                "distinct_models": len({r["sha1"] for r in runs}),
                "registered": [min(r["registered"] for r in runs), max(r["registered"] for r in runs)],
                "points": [min(r["points"] for r in runs), max(r["points"] for r in runs)],
                "max_centre_diff": max((d[0] for d in diffs), default=0.0),
                "max_point_diff": max((d[1] for d in diffs), default=0.0),
            }
        )
    print(json.dumps({"stage_files": stages, "map": rows}, indent=2))
    print(f"stage files of two runs: {stages['differing']} of {stages['datasets']} datasets differ\n")
    print("| threads | runs | distinct models | registered | 3D points | max centre diff | max point diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['runs']} | {r['distinct_models']} | "
            f"{r['registered'][0]}-{r['registered'][1]} | {r['points'][0]}-{r['points'][1]} | "
            f"{r['max_centre_diff']:.2e} | {r['max_point_diff']:.2e} |"
        )


if __name__ == "__main__":
    main()
