"""Strecha scenes: sfmkit (dense VGG16 at the given sizes), sfmkit with other feature presets
(``--features``, default sift and aliked, i.e. ALIKED + LightGlue, the modern peer) and COLMAP's
own SIFT pipeline, in the same run on the same machine. Writes results.json, results.md and a
top-view PNG per scene (as ``sfmkit evaluate strecha``) and prints the table.

    python benchmarks/strecha.py ../shared/datasets/strecha/fountain-P11 \
        ../shared/datasets/strecha/Herz-Jesus-P8 -o bench_out [--intrinsics] [--max-size 1024 1600] \
        [--features sift multiscale-kp] [--refine none keypoints featuremetric-vgg]
"""

from __future__ import annotations

import argparse
import logging

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from pathlib import Path

import pycolmap

from sfmkit.eval.strecha import evaluate_strecha
from sfmkit.features import get_conf, with_max_size
from sfmkit.pipelines.methods import Runner, colmap_sift_runner, sfmkit_runner
from sfmkit.pipelines.reconstruct import ReconstructConf


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument("--intrinsics", action="store_true", help="use each scene's images/K.txt")
    parser.add_argument(
        "--max-size",
        nargs="*",
        default=["default"],
        help="dense VGG16 sizes: 'default' (the preset's: 1024 px, 640 px for these 3072-px images) or "
        "pixels, for every image (none: no dense run)",
    )
    parser.add_argument(
        "--features",
        nargs="*",
        default=["sift", "aliked"],
        help="further sfmkit feature presets (aliked, disk, xfeat: matched by LightGlue)",
    )
    parser.add_argument(
        "--refine",
        nargs="+",
        default=["default"],
        help="keypoint refinements of every sfmkit run: default (the feature type's), none, keypoints, "
        "or a preset of sfmkit.refinement.refine.CONFS",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    runners: dict[str, Runner] = {}
    for size in args.max_size:
        for refine in args.refine:
            label = "" if len(args.refine) == 1 else f" refine {refine}"
            sized = "" if size == "default" else f" {size}px"
            max_size = None if size == "default" else int(size)
            runners[f"sfmkit dense-vgg16{sized}{label}"] = sfmkit_runner(
                ReconstructConf(
                    features=with_max_size(get_conf("dense-vgg16"), max_size),
                    refine=None if refine == "default" else refine,
                )
            )
    for preset in args.features:
        for refine in args.refine:
            label = "" if len(args.refine) == 1 else f" refine {refine}"
            runners[f"sfmkit {preset}{label}"] = sfmkit_runner(
                ReconstructConf(features=get_conf(preset), refine=None if refine == "default" else refine)
            )
    runners["COLMAP sift (pycolmap)"] = colmap_sift_runner("from-scene")
    out = args.output / ("strecha_K" if args.intrinsics else "strecha")
    evaluate_strecha(args.scenes, out, runners, intrinsics=args.intrinsics)
    print(f"Known intrinsics (K.txt): {'yes' if args.intrinsics else 'no'}\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
