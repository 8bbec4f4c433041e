"""Learned multiscale keypoints on held-out patch files: patch retrieval (1 true match among
100, top-1 / top-5) beside upright SIFT and raw pixels on the same patches, and the detector's
precision-recall AUC; prints JSON and the markdown table (as ``sfmkit evaluate patches``).

    sfmkit build-patches SCENE/sift/sfm SCENE/images -o test/SCENE.h5    # per held-out scene
    python benchmarks/keypoints.py test/*.h5 -o bench_out/patches [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sfmkit.eval.patches import evaluate_patches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("patches", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/patches"))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--descriptor", nargs="+", default=["default", "random"])
    parser.add_argument("--detector", nargs="+", default=["default", "random"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = evaluate_patches(
        args.patches,
        args.output,
        descriptors=args.descriptor,
        detectors=args.detector,
        queries=args.queries,
        device="auto",
    )
    print(json.dumps(results, indent=1))
    print((args.output / "results.md").read_text())


if __name__ == "__main__":
    main()
