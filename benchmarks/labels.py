"""Time to build GL3D labels (``sfmkit build-gl3d-labels``) for rendered scenes of N images,
with the exact mesh and, for comparison, with a Poisson surface from the ground-truth tracks.

    python benchmarks/labels.py -o bench_out --scene aerial --n-images 20 50 --size 640x480

With ``--model SFM --verified verified.h5 --images DIR`` it labels a real reconstruction with
``--mesh-from-model`` instead and reports how MO correlates with the verified matches per pair.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from sfmkit.io.h5 import H5Reader
from sfmkit.pipelines.build_gl3d_labels import LabelsConf, build_gl3d_labels
from sfmkit.pipelines.synth import SynthConf, synthesize


def real_model(args: argparse.Namespace) -> None:
    """Labels of a real model from its own points, against its verified matches."""
    out = args.output / "labels" / args.model.parent.name
    result = build_gl3d_labels(args.model, out / "labels.h5", LabelsConf(mesh_from_model=True), args.images)
    labels = result.labels
    rows = []
    with H5Reader(args.verified) as reader:
        for i, a in enumerate(labels.names):
            for j in range(i + 1, len(labels.names)):
                b = labels.names[j]
                try:
                    key, _ = reader.pair_key((a, b))
                    inliers = len(reader.array(key, "inliers"))
                except Exception:  # noqa: BLE001 - pair not verified
                    inliers = 0
                ct, mo = float(labels.common_track[i, j]), float(labels.mesh[i, j])
                rows.append({"pair": [a, b], "inliers": inliers, "MO": mo, "CT": ct})
    inl = np.array([r["inliers"] for r in rows], float)
    mo = np.array([r["MO"] for r in rows])
    ct = np.array([r["CT"] for r in rows])
    summary = {
        "model": str(args.model),
        "images": len(labels.names),
        "triangles": result.counts["triangles"],
        "strong_pairs": result.counts["strong_pairs"],
        "weak_pairs": result.counts["weak_pairs"],
        "pearson_MO_inliers": float(pearsonr(mo, inl)[0]),
        "spearman_MO_inliers": float(spearmanr(mo, inl)[0]),
        "pearson_CT_inliers": float(pearsonr(ct, inl)[0]),
        "spearman_CT_inliers": float(spearmanr(ct, inl)[0]),
        "timings_s": result.timings,
        "mask_figure": str(result.plot),
        "pairs": rows,
    }
    (out / "labels_real.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "pairs"}, indent=1))
    print("| pair | verified inliers | MO | CT |\n|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["MO"]):
        print(f"| {r['pair'][0]} - {r['pair'][1]} | {r['inliers']} | {r['MO']:.3f} | {r['CT']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument("--scene", default="aerial")
    parser.add_argument("--n-images", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-poisson", action="store_true", help="Skip the --mesh-from-model run.")
    parser.add_argument("--model", type=Path, help="A real COLMAP model (labels from its points).")
    parser.add_argument("--verified", type=Path, help="With --model: its verified-*.h5.")
    parser.add_argument("--images", type=Path, help="With --model: its image folder.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.model is not None:
        real_model(args)
        return
    size = tuple(int(v) for v in args.size.split("x"))
    rows = []
    for n in args.n_images:
        folder = args.output / "labels" / f"{args.scene}-{n}"
        start = time.perf_counter()
        synth = synthesize(SynthConf(scene=args.scene, n_images=n, size=size, seed=args.seed), folder)
        synth_s = time.perf_counter() - start
        variants = [("exact mesh", LabelsConf(mesh=str(folder / "mesh.ply")))]
        if not args.no_poisson:
            variants.append(("poisson from tracks", LabelsConf(mesh_from_model=True)))
        for label, conf in variants:
            tag = "exact" if conf.mesh else "poisson"
            result = build_gl3d_labels(folder / "model", folder / f"labels-{tag}.h5", conf)
            off = ~np.eye(n, dtype=bool)
            rows.append(
                {
                    "scene": args.scene,
                    "images": n,
                    "size": args.size,
                    "surface": label,
                    "triangles": result.counts["triangles"],
                    "strong_pairs": result.counts["strong_pairs"],
                    "weak_pairs": result.counts["weak_pairs"],
                    "masks": result.counts["masks"],
                    "mean_MO": float(result.labels.mesh[off].mean()),
                    "synth_s": round(synth_s, 1),
                    "timings_s": result.timings,
                    "render_s": synth.timings["render"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "labels.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| scene | images | surface | triangles | strong | weak | masks | mean MO | labels (s) "
        "| of which ray casting (s) | synth (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timings_s"]
        lines.append(
            f"| {r['scene']} {r['size']} | {r['images']} | {r['surface']} | {r['triangles']} "
            f"| {r['strong_pairs']} | {r['weak_pairs']} | {r['masks']} | {r['mean_MO']:.3f} "
            f"| {t['total']:.1f} | {t['visibility']:.1f} | {r['synth_s']:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    (args.output / "labels.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
