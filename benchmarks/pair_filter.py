"""GetNet as a pair filter in ``reconstruct`` (issue 16, acceptance 3): the same rendered scene
reconstructed with ``--pairs retrieval:K`` alone and with ``--pair-filter getnet[:SCORE]``, in
one run. Reports the pairs matched and dropped, registered images, camera-centre error against
the exact ground truth (after the robust similarity alignment) and the wall time per stage.

    python benchmarks/pair_filter.py -o bench_out/filter --model getnet.pt \
        [--scene orbit -n 50 --size 640x480 --seed 31] [-k 10] [--scores 0.5]

The scene is made by ``sfmkit synth`` unless ``-o`` already holds it; use a seed the model was
not trained on.
"""

from __future__ import annotations

import argparse
import json

# before pycolmap, also in the processes that multiprocessing spawns (they re-import this script):
# see sfmkit/__init__.py
import zlib  # noqa: F401
from dataclasses import replace
from pathlib import Path

import pycolmap

from sfmkit.eval.strecha import score_model
from sfmkit.pipelines.reconstruct import ReconstructConf, reconstruct
from sfmkit.pipelines.synth import SynthConf, synthesize
from sfmkit.retrieval.pair_filter import PairFilterConf


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/filter"))
    parser.add_argument("--model", type=Path, default=None, help="GetNet model (default: the shipped one)")
    parser.add_argument("--scene", default="orbit")
    parser.add_argument("-n", "--n-images", type=int, default=50)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--scores", nargs="+", type=float, default=[0.5])
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    scene = args.output / f"{args.scene}-{args.seed}"
    if not (scene / "images").is_dir():
        w, h = (int(v) for v in args.size.split("x"))
        synthesize(SynthConf(scene=args.scene, n_images=args.n_images, size=(w, h), seed=args.seed), scene)
    base = ReconstructConf(pairs=f"retrieval:{args.k}")
    runs = [("unfiltered", base)] + [
        (
            f"getnet:{s:g}",
            replace(
                base,
                pair_filter=PairFilterConf(
                    threshold=s, model=None if args.model is None else str(args.model)
                ),
            ),
        )
        for s in args.scores
    ]
    rows = []
    for name, conf in runs:
        out = args.output / name.replace(":", "-")
        result = reconstruct(conf, scene / "images", out, overwrite=True)
        score = score_model(scene, result.mapping.reconstruction)
        counts = result.counts
        matched = counts["match"]["pairs"]
        row = {
            "run": name,
            "pairs_in": counts.get("filter", {}).get("pairs", matched),
            "pairs_dropped": counts.get("filter", {}).get("dropped", 0),
            "registered": score["registered"],
            "total": score["total"],
            "position_mean_m": score.get("position_m", {}).get("mean"),
            "timings": {k: round(v, 1) for k, v in result.timings.items()},
            "total_s": round(result.timings["total"], 1),
            "match_counts": counts["match"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    first = rows[0]
    print(
        "\n| run | pairs | dropped | registered | centre error mean (scene units) | total (s) | time ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        err = "-" if r["position_mean_m"] is None else f"{r['position_mean_m']:.4f}"
        share = 100 * r["pairs_dropped"] / max(r["pairs_in"], 1)
        print(
            f"| {r['run']} | {r['pairs_in']} | {r['pairs_dropped']} ({share:.0f}%) "
            f"| {r['registered']}/{r['total']} | {err} | {r['total_s']} "
            f"| {r['total_s'] / first['total_s']:.2f}x |"
        )


if __name__ == "__main__":
    main()
