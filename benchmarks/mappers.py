"""Incremental, global (GLOMAP) and hierarchical mapping on the same verified matches: each scene
is reconstructed once by the default pipeline (or ``--features``), then its verified matches and
(refined) keypoints are mapped again by every mapper; each model is scored against the scene's
ground truth. Prints JSON lines and a markdown table.

    python benchmarks/mappers.py ../shared/datasets/strecha/fountain-P11 \
        ../shared/datasets/strecha/Herz-Jesus-P8 -o bench_out/mappers [--intrinsics] \
        [--mappers incremental global hierarchical] [--features dense-vgg16]

The map time is the mapper alone (database import included); the stages before it are shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from dataclasses import replace
from pathlib import Path

import pycolmap

from sfmkit.eval.strecha import score_model
from sfmkit.features import get_conf
from sfmkit.pipelines.reconstruct import ReconstructConf, reconstruct
from sfmkit.reconstruction.mapping import MAPPERS, map_images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/mappers"))
    parser.add_argument("--intrinsics", action="store_true", help="use each scene's images/K.txt")
    parser.add_argument("--mappers", nargs="+", default=list(MAPPERS), choices=MAPPERS)
    parser.add_argument("--features", default="dense-vgg16")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    rows = []
    for scene in args.scenes:
        images = scene / "images"
        conf = ReconstructConf(features=get_conf(args.features))
        if args.intrinsics:
            camera = replace(conf.mapping.camera, intrinsics=str((images / "K.txt").resolve()))
            conf = replace(conf, mapping=replace(conf.mapping, camera=camera))
        work = args.output / ("K" if args.intrinsics else "noK") / scene.name
        base = reconstruct(conf, images, work)
        outputs = json.loads(base.report.read_text())["reconstruct"]["outputs"]
        keypoints = outputs["refined"] or outputs["features"]
        pairs = json.loads(base.report.read_text())["reconstruct"]["inputs"]["pairs"]
        for mapper in args.mappers:
            start = time.perf_counter()
            result = map_images(
                replace(conf.mapping, mapper=mapper),
                images,
                Path(outputs["verified"]),
                Path(pairs),
                work / f"sfm-{mapper}",
                features=Path(keypoints),
                overwrite=True,
            )
            seconds = time.perf_counter() - start
            score = score_model(scene, result.reconstruction)
            rows.append(
                {
                    "scene": scene.name,
                    "mapper": mapper,
                    "intrinsics": args.intrinsics,
                    "registered": f"{score['registered']}/{score['total']}",
                    "position_mm": {k: round(v * 1000, 2) for k, v in score.get("position_m", {}).items()},
                    "rotation_deg": score.get("rotation_deg"),
                    "points3D": result.stats.get("points3D"),
                    "map_s": round(seconds, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (args.output / f"mappers{'_K' if args.intrinsics else ''}.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| scene | mapper | registered | position mean / median / max (mm) | 3D points | map (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["position_mm"]
        pos = f"{p['mean']:.1f} / {p['median']:.1f} / {p['max']:.1f}" if p else "-"
        cells = [r["scene"], r["mapper"], r["registered"], pos, str(r["points3D"]), f"{r['map_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    print(f"\nknown intrinsics: {'yes' if args.intrinsics else 'no'}; features: {args.features}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
