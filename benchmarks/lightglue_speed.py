"""LightGlue seconds per pair on this machine: kornia's module as shipped against sfmkit's matcher
(fused cross-attention), each with all layers and points (no adaptive depth or width) and with
LightGlue's adaptive depth and width, on the same keypoints, and the share of keypoints whose
match (or non-match) equals that of the full reference. Prints JSON lines and a markdown table.

    python benchmarks/lightglue_speed.py ../shared/datasets/strecha/fountain-P11/images \
        -o bench_out/lightglue [--features aliked] [--pairs 12] [--variants ...]

``--pairs N`` takes N pairs spread evenly over the exhaustive list (0: all of them); the
features are extracted once with the preset's settings (4096 keypoints at 1600 px for aliked).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sfmkit.features import get_conf
from sfmkit.features.extract import extract
from sfmkit.io.h5 import H5Reader
from sfmkit.matching.lightglue import LightGlueConf, LightGlueMatcher, load_item

VARIANTS = {
    "kornia full": LightGlueConf(fused_attention=False, depth_confidence=-1, width_confidence=-1),
    "kornia adaptive": LightGlueConf(fused_attention=False),
    "sfmkit full": LightGlueConf(depth_confidence=-1, width_confidence=-1),
    "sfmkit adaptive": LightGlueConf(),
    "sfmkit adaptive 2048": LightGlueConf(max_keypoints=2048),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/lightglue"))
    parser.add_argument("--features", default="aliked")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    conf = get_conf(args.features)
    features = extract(conf, args.images, args.output, device="cpu")
    device = torch.device("cpu")
    with H5Reader(features, "features") as reader:
        names = sorted(k[0] for k in reader.items(1))
        items = {n: load_item(reader, n, device) for n in names}
    pairs = list(itertools.combinations(names, 2))
    if args.pairs:
        pairs = [pairs[round(i)] for i in np.linspace(0, len(pairs) - 1, min(args.pairs, len(pairs)))]
    reference: dict[tuple[str, str], np.ndarray] = {}
    rows = []
    for label in args.variants:
        matcher = LightGlueMatcher(VARIANTS[label], conf.family, device)
        matcher(items[pairs[0][0]], items[pairs[0][1]])  # warm-up
        seconds, counts, agree = [], [], []
        for pair in pairs:
            start = time.perf_counter()
            out = matcher(items[pair[0]], items[pair[1]])["matches0"]
            seconds.append(time.perf_counter() - start)
            counts.append(int((out > -1).sum()))
            if label == "kornia full":
                reference[pair] = out
            if pair in reference:
                agree.append(float(np.mean(out == reference[pair])))
        q1, _, q3 = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else (seconds[0],) * 3
        rows.append(
            {
                "variant": label,
                "pairs": len(pairs),
                "keypoints": int(np.median([items[n]["keypoints"].shape[0] for n in names])),
                "median_s_per_pair": round(statistics.median(seconds), 3),
                "iqr_s": [round(q1, 3), round(q3, 3)],
                "total_s": round(sum(seconds), 2),
                "median_matches": int(statistics.median(counts)),
                "agreement_with_kornia_full": round(float(np.mean(agree)), 4) if agree else None,
                "threads": torch.get_num_threads(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (args.output / "lightglue_speed.json").write_text(json.dumps(rows, indent=2))
    base = next((r["median_s_per_pair"] for r in rows if r["variant"] == "kornia full"), None)
    lines = [
        "| variant | s / pair (median) | IQR | matches (median) | same as kornia full "
        "| speed-up vs kornia full |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = f"{base / r['median_s_per_pair']:.2f}x" if base else "-"
        agree = "-" if r["agreement_with_kornia_full"] is None else f"{r['agreement_with_kornia_full']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['median_s_per_pair']:.2f} | {r['iqr_s'][0]:.2f}-{r['iqr_s'][1]:.2f} "
            f"| {r['median_matches']} | {agree} | {speedup} |"
        )
    print(f"\n{args.features}, {rows[0]['keypoints']} keypoints per image, {len(pairs)} pairs\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
