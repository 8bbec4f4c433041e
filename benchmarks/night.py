"""The night proxy (``sfmkit make-night``, NOT Aachen Day-Night) at several strengths, sfmkit
beside COLMAP's SIFT pipeline. For each scene and strength: subsets are made, both methods
run the Aachen protocol, and the registered night queries and the percentages within
0.5 / 1 / 5 m at 10 degrees are tabulated (JSON and markdown).

    python benchmarks/night.py ../shared/datasets/strecha/fountain-P11 \
        ../shared/datasets/strecha/Herz-Jesus-P8 -o bench_out --strengths 0.5 1.0 1.5
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pycolmap

from sfmkit.eval.methods import colmap_sift_runner
from sfmkit.pipelines.evaluate_aachen import evaluate_aachen
from sfmkit.pipelines.make_night import make_night
from sfmkit.pipelines.reconstruct import ReconstructConf


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenes", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-size", type=int, default=1024)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    rows = []
    for scene in args.scenes:
        for strength in args.strengths:
            work = args.output / "night" / f"{scene.name}-s{strength:g}"
            make_night(scene, work / "subsets", seed=args.seed, strength=strength, max_size=args.max_size)
            results = json.loads(
                evaluate_aachen(
                    work / "subsets",
                    work / "eval",
                    ["sfmkit", "colmap-sift"],
                    ReconstructConf(),
                    colmap_sift_runner(),
                ).read_text()
            )
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
            print(json.dumps(rows[-2:], indent=1), flush=True)
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
            f"{r['strength']:g}",
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
