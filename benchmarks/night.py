"""The night proxy (``sfmkit make-night``, NOT Aachen Day-Night) at several strengths, sfmkit
beside ALIKED + LightGlue (the modern peer) and COLMAP's SIFT pipeline. For each scene and
strength: subsets are made, every method runs the Aachen protocol, and the registered night
queries and the percentages within 0.5 / 1 / 5 m at 10 degrees are tabulated (JSON and
markdown).

    python benchmarks/night.py ../shared/datasets/strecha/fountain-P11 \
        ../shared/datasets/strecha/Herz-Jesus-P8 -o bench_out --strengths 0.5 1.0 1.5

The second night benchmark uses rendered scenes relit at night instead of the 2D simulation
(the light direction and sources change); ``--relit`` takes scenes made by
``sfmkit synth --lighting both``, whose ``images_night/`` become the queries:

    sfmkit synth syn_orbit --scene orbit -n 16 --size 640x480 --lighting both
    python benchmarks/night.py syn_orbit -o bench_out --relit
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from pathlib import Path

import pycolmap

from sfmkit.eval.aachen import evaluate_aachen
from sfmkit.features import get_conf
from sfmkit.pipelines.make_night import make_night
from sfmkit.pipelines.methods import colmap_sift_runner
from sfmkit.pipelines.reconstruct import ReconstructConf


def run_unit(scene: Path, work: Path, strength: float | None, seed: int, max_size: int) -> None:
    """One scene at one strength (None: relit renders): subsets, then every method through the
    Aachen protocol."""
    if strength is None:
        make_night(scene, work / "subsets", max_size=max_size, night_images=scene / "images_night")
    else:
        make_night(scene, work / "subsets", seed=seed, strength=strength, max_size=max_size)
    evaluate_aachen(
        work / "subsets",
        work / "eval",
        ["sfmkit", "aliked-lightglue", "colmap-sift"],
        ReconstructConf(),
        colmap_sift_runner(),
        variants={"aliked-lightglue": ReconstructConf(features=get_conf("aliked"))},
    )


def _work(output: Path, scene: Path, strength: float | None) -> Path:
    return output / "night" / (f"{scene.name}-relit" if strength is None else f"{scene.name}-s{strength:g}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument(
        "--relit", action="store_true", help="night queries from the scenes' images_night/ (synth renders)"
    )
    parser.add_argument("--unit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    conditions: list[float | None] = [None] if args.relit else list(args.strengths)
    if args.unit:
        scene, condition = args.scenes[0], conditions[0]
        run_unit(scene, _work(args.output, scene, condition), condition, args.seed, args.max_size)
        return
    for scene in args.scenes:
        if args.relit and not (scene / "images_night").is_dir():
            raise SystemExit(f"{scene} has no images_night/; make it with 'sfmkit synth --lighting both'")
    rows = []
    for scene in args.scenes:
        for strength in conditions:
            work = _work(args.output, scene, strength)
            done = work / "eval" / "results.json"
            if not done.is_file():
                # Each scene and strength in its own process: dozens of reconstructions in one
                # process once ended in a native crash (heap corruption reported by zlib).
                command = [sys.executable, __file__, str(scene), "-o", str(args.output), "--unit"]
                command += ["--relit"] if strength is None else ["--strengths", str(strength)]
                command += ["--seed", str(args.seed), "--max-size", str(args.max_size)]
                code = subprocess.run(command, check=False).returncode
                if not done.is_file():
                    raise SystemExit(f"{work.name} failed (exit code {code})")
            results = json.loads(done.read_text())
            for method, data in results["methods"].items():
                s = data["summary"]
                rows.append(
                    {
                        "scene": scene.name,
                        "strength": strength,
                        "method": method,
                        "queries": s["queries"],
                        "registered_pct": s["registered_pct"],
                        "within": s["within"],
                        "within_v1.1": s["within_v1.1"],
                        "seconds": results["timings_s"][method],
                    }
                )
            print(json.dumps(rows[-len(results["methods"]) :], indent=1), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "night.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| scene | strength | method | registered | within 0.5 m, 10° | within 1 m, 10° "
        "| within 5 m, 10° | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["within"]
        cells = [
            r["scene"],
            "relit" if r["strength"] is None else f"{r['strength']:g}",
            r["method"],
            f"{r['registered_pct']:.0f}% of {r['queries']}",
            *(f"{w[k]:.0f}%" for k in ("0.5m,10.0deg", "1.0m,10.0deg", "5.0m,10.0deg")),
            f"{r['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (args.output / "night.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
