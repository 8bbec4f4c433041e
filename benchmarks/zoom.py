"""Close-up registration on a Strecha scene: one view is replaced by the central 1/s crop of
itself, kept at full resolution (what a camera zoomed in s times from the same place takes,
lower resolution aside), for each factor s. Runs COLMAP's own SIFT pipeline and the sfmkit
feature presets in the same run and reports whether the close-up registers, its centre and
rotation errors against the ground truth, and the mean centre error of the whole scene.
Prints JSON and a markdown table.

    python benchmarks/zoom.py ../shared/datasets/strecha/fountain-P11 -o bench_out/zoom \
        [--view 0005.jpg] [--factors 2 3 4] [--features dense-vgg16 dense-vgg16-ms aliked]

The close-up gets its own camera (its size differs) with unknown focal length, so its distance
along the viewing direction is weakly determined for every method: compare the columns.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from pathlib import Path

import pycolmap
from PIL import Image

from sfmkit.eval.strecha import score_model
from sfmkit.features import get_conf
from sfmkit.io.images import list_images
from sfmkit.pipelines.methods import Runner, colmap_sift_runner, sfmkit_runner
from sfmkit.pipelines.reconstruct import ReconstructConf


def make_zoomed_scene(scene: Path, view: str, factor: int, out: Path) -> Path:
    """A copy of ``scene``'s images (no K.txt: the close-up has other intrinsics) with ``view``
    replaced by its central 1/``factor`` crop at full resolution; returns the image folder."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in list_images(scene / "images").names:
        if name != view:
            shutil.copy2(scene / "images" / name, images / name)
    with Image.open(scene / "images" / view) as im:
        w, h = im.size
        cw, ch = w // factor, h // factor
        left, top = (w - cw) // 2, (h - ch) // 2
        im.crop((left, top, left + cw, top + ch)).save(images / view, quality=95)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scene", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/zoom"))
    parser.add_argument("--view", default=None, help="image replaced by its close-up (default: the middle)")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--features", nargs="+", default=["dense-vgg16", "dense-vgg16-ms", "aliked"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    names = list_images(args.scene / "images").names
    view = args.view or names[len(names) // 2]
    runners: dict[str, Runner] = {"COLMAP sift (pycolmap)": colmap_sift_runner("auto")}
    for preset in args.features:
        runners[f"sfmkit {preset}"] = sfmkit_runner(ReconstructConf(features=get_conf(preset)))
    rows = []
    for factor in args.factors:
        root = args.output / args.scene.name / f"x{factor}"
        images = make_zoomed_scene(args.scene, view, factor, root)
        for label, run in runners.items():
            start = time.perf_counter()
            result = run(images, None, root / label.split(" (")[0].replace(" ", "_"), None)
            wall = time.perf_counter() - start
            score = score_model(args.scene, result.reconstruction)
            close = score["cameras"].get(view)
            others = [c["position_m"] for n, c in score["cameras"].items() if n != view]
            rows.append(
                {
                    "scene": args.scene.name,
                    "factor": factor,
                    "method": label,
                    "registered": f"{score['registered']}/{score['total']}",
                    "close_up_registered": close is not None,
                    "close_up_position_mm": None if close is None else round(1000 * close["position_m"], 1),
                    "close_up_rotation_deg": None if close is None else round(close["rotation_deg"], 3),
                    "others_position_mean_mm": round(1000 * sum(others) / max(1, len(others)), 1),
                    "wall_s": round(wall, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "zoom.json").write_text(json.dumps(rows, indent=2))
    lines = [
        f"Close-up of {view} (central 1/s crop at full resolution):",
        "",
        "| scene | s | method | registered | close-up centre (mm) | close-up rotation (deg) "
        "| other centres mean (mm) | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pos = "not registered" if r["close_up_position_mm"] is None else r["close_up_position_mm"]
        rot = "-" if r["close_up_rotation_deg"] is None else r["close_up_rotation_deg"]
        lines.append(
            f"| {r['scene']} | {r['factor']} | {r['method']} | {r['registered']} | {pos} | {rot} "
            f"| {r['others_position_mean_mm']} | {r['wall_s']} |"
        )
    table = "\n".join(lines) + "\n"
    (args.output / "zoom.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
