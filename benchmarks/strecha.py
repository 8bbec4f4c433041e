"""Strecha scenes: sfmkit (dense VGG16), sfmkit --features sift and COLMAP's own SIFT
pipeline, in the same run on the same machine. Prints JSON and a markdown table.

    python benchmarks/strecha.py ../shared/datasets/strecha/fountain-P11 \
        ../shared/datasets/strecha/Herz-Jesus-P8 -o bench_out [--intrinsics] [--max-size 1024 1600]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pycolmap

from sfmkit.eval.colmap_sift import run_colmap_sift
from sfmkit.eval.poses import mean_relative_rotation_error, model_poses, pose_errors
from sfmkit.eval.strecha import read_scene
from sfmkit.features import get_conf
from sfmkit.io.images import list_images
from sfmkit.pipelines.reconstruct import ReconstructConf, reconstruct
from sfmkit.reconstruction.cameras import CameraConf
from sfmkit.reconstruction.mapping import MapConf
from sfmkit.utils.config import replace


def score(scene: Path, rec: pycolmap.Reconstruction | None) -> dict:
    truth = {n: c.pose for n, c in read_scene(scene).items()}
    est = model_poses(rec) if rec is not None else {}
    out = {"registered": len(set(est) & set(truth)), "total": len(truth)}
    if out["registered"] >= 3:
        errors = pose_errors(truth, est)
        summary = errors.summary()
        out.update(
            position_mm={k: round(1000 * v, 2) for k, v in summary["position"].items()},
            rotation_deg={k: round(v, 3) for k, v in summary["rotation_deg"].items()},
            relative_rotation_deg=round(mean_relative_rotation_error(truth, est), 3),
        )
    return out


def run_scene(scene: Path, out: Path, intrinsics: bool, sizes: list[int]) -> list[dict]:
    images = scene / "images"
    k_file = images / "K.txt" if intrinsics else None
    mapping = MapConf(camera=CameraConf(intrinsics=str(k_file) if k_file else None))
    rows = []
    methods = [(f"sfmkit dense-vgg16 {s}px", replace(get_conf("dense-vgg16"), max_size=s)) for s in sizes]
    methods.append(("sfmkit sift", get_conf("sift")))
    for label, fconf in methods:
        start = time.perf_counter()
        result = reconstruct(
            ReconstructConf(features=fconf, mapping=mapping),
            images,
            out / scene.name / label.replace(" ", "_"),
            overwrite=True,
        )
        rows.append(
            {
                "scene": scene.name,
                "method": label,
                "wall_s": round(time.perf_counter() - start, 1),
                "timings": result.timings,
                **score(scene, result.mapping.reconstruction),
            }
        )
    start = time.perf_counter()
    names = list_images(images).names
    colmap = run_colmap_sift(
        images, names, out / scene.name / "colmap_sift", intrinsics=k_file, camera_mode="single"
    )
    rows.append(
        {
            "scene": scene.name,
            "method": "COLMAP sift (pycolmap)",
            "wall_s": round(time.perf_counter() - start, 1),
            "timings": colmap.timings,
            **score(scene, colmap.reconstruction),
        }
    )
    return rows


def markdown(rows: list[dict], intrinsics: bool) -> str:
    head = (
        "| scene | method | registered | position mean / median / max (mm) | rotation mean (deg) "
        "| relative rotation (deg) | time extract / match / verify / map (s) | wall (s) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        p, t = r.get("position_mm", {}), r["timings"]
        pos = f"{p['mean']:.1f} / {p['median']:.1f} / {p['max']:.1f}" if p else "-"
        rot = f"{r['rotation_deg']['mean']:.3f}" if "rotation_deg" in r else "-"
        stages = " / ".join(f"{t.get(s, 0):.0f}" for s in ("extract", "match", "verify", "map"))
        lines.append(
            f"| {r['scene']} | {r['method']} | {r['registered']}/{r['total']} | {pos} | {rot} "
            f"| {r.get('relative_rotation_deg', '-')} | {stages} | {r['wall_s']} |"
        )
    title = f"Known intrinsics (K.txt): {'yes' if intrinsics else 'no'}\n\n"
    return title + head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument("--intrinsics", action="store_true", help="use each scene's images/K.txt")
    parser.add_argument("--max-size", type=int, nargs="+", default=[1024])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    rows = [
        row for scene in args.scenes for row in run_scene(scene, args.output, args.intrinsics, args.max_size)
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    suffix = "_K" if args.intrinsics else ""
    (args.output / f"strecha{suffix}.json").write_text(json.dumps(rows, indent=2))
    table = markdown(rows, args.intrinsics)
    (args.output / f"strecha{suffix}.md").write_text(table)
    print(json.dumps(rows, indent=2))
    print(table)


if __name__ == "__main__":
    main()
