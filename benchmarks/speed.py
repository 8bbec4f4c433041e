"""Where does the time of ``reconstruct`` go? Per-stage seconds per image of the default
pipeline beside COLMAP's own SIFT pipeline in the same run, peak memory of each, and a
profile of the dense VGG16 extraction of one image (per convolution, and the work after the
network: relocalisation, normalisation, copies).

    python benchmarks/speed.py SCENE/images -o bench_out/speed [--max-size N] [--runs 1]

Each method runs in its own process (``python -m sfmkit reconstruct``; pycolmap's
``extract_features`` + ``match_exhaustive`` + ``incremental_mapping`` for COLMAP SIFT), one
after the other, so their peak memories are their own. Prints JSON and markdown tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COLMAP_SCRIPT = """
import json, resource, sys
from pathlib import Path
from sfmkit.io.images import list_images
from sfmkit.pipelines.colmap_sift import run_colmap_sift
images, out = Path(sys.argv[1]), Path(sys.argv[2])
result = run_colmap_sift(images, list_images(images).names, out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rec = result.reconstruction
registered = 0 if rec is None else rec.num_reg_images()
print(json.dumps({"timings": result.timings, "peak_memory_mb": peak, "registered": registered}))
"""


def run_sfmkit(images: Path, out: Path, max_size: int | None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    extra = ["--max-size", str(max_size)] if max_size else []
    cmd = [
        sys.executable,
        "-m",
        "sfmkit",
        "-q",
        "--no-progress",
        "reconstruct",
        str(images),
        "-o",
        str(out),
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    section = json.loads((out / "report.json").read_text())["reconstruct"]
    return {
        "timings": section["timings"],
        "wall": wall,
        "peak_memory_mb": section["peak_memory_mb"]["max"],
        "registered": section["reconstruction"]["registered"],
    }


def run_colmap(images: Path, out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COLMAP_SCRIPT, str(images), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start
    return result


def profile_extraction(images: Path, max_size: int | None) -> dict:
    """Seconds of each VGG16 convolution and of the rest of one image's dense extraction
    (median of 3 passes after a warm-up)."""
    import torch

    from sfmkit.features import get_conf
    from sfmkit.features.dense_vgg import DenseVGGExtractor
    from sfmkit.io.images import list_images, read_image
    from sfmkit.utils.config import replace

    conf = replace(get_conf("dense-vgg16"), max_size=max_size)
    extractor = DenseVGGExtractor(conf, torch.device("cpu"))
    name = list_images(images).names[0]
    image = read_image(images / name, conf.max_size)
    marks: list[tuple[str, float]] = []
    hooks = [
        conv.register_forward_hook(lambda m, i, o, n=n: marks.append((n, time.perf_counter())))
        for n, conv in extractor.net.convs.items()
    ]
    extractor(image)  # warm-up
    passes = []
    for _ in range(3):
        marks.clear()
        start = time.perf_counter()
        extractor(image)
        end = time.perf_counter()
        layers, last = {}, start
        for n, t in marks:
            layers[n] = t - last  # includes the ReLU and pooling before it
            last = t
        layers["after the network (relocalisation, norms, copies)"] = end - last
        passes.append((end - start, layers))
    for hook in hooks:
        hook.remove()
    total = statistics.median(p[0] for p in passes)
    layers = {k: statistics.median(p[1][k] for p in passes) for k in passes[0][1]}
    return {"image": name, "size": list(image.rgb.shape[1::-1]), "total_s": total, "parts_s": layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--max-size", type=int, help="sfmkit's --max-size (default: the preset's).")
    parser.add_argument("--runs", type=int, default=1, help="Runs of each method (medians reported).")
    args = parser.parse_args()
    from sfmkit.io.images import list_images

    n = len(list_images(args.images).names)
    runs: dict[str, list[dict]] = {"sfmkit": [], "colmap_sift": []}
    for i in range(args.runs):
        print(f"run {i}: sfmkit", file=sys.stderr)
        runs["sfmkit"].append(run_sfmkit(args.images, args.output / "sfmkit", args.max_size))
        print(f"run {i}: COLMAP SIFT", file=sys.stderr)
        runs["colmap_sift"].append(run_colmap(args.images, args.output / "colmap"))
    print("profiling one extraction", file=sys.stderr)
    profile = profile_extraction(args.images, args.max_size)
    summary = {}
    for method, rs in runs.items():
        stages = sorted({k for r in rs for k in r["timings"]})
        summary[method] = {
            "per_image_s": {k: statistics.median(r["timings"].get(k, 0.0) for r in rs) / n for k in stages},
            "total_s": statistics.median(r["timings"]["total"] for r in rs),
            "wall_s": statistics.median(r["wall"] for r in rs),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in rs),
            "registered": [r["registered"] for r in rs],
        }
    ratio = summary["sfmkit"]["total_s"] / summary["colmap_sift"]["total_s"]
    print(
        json.dumps(
            {"images": n, "methods": summary, "ratio_total": ratio, "extraction_profile": profile}, indent=2
        )
    )
    print(f"\n{n} images; sfmkit / COLMAP SIFT total time: {ratio:.2f}x\n")
    print("| method | stage | s / image |\n|---|---|---|")
    for method, s in summary.items():
        for stage, v in s["per_image_s"].items():
            print(f"| {method} | {stage} | {v:.2f} |")
    print(
        "\n| method | total (s) | wall incl. start-up (s) | peak memory (MB) | registered |\n"
        "|---|---|---|---|---|"
    )
    for method, s in summary.items():
        print(
            f"| {method} | {s['total_s']:.1f} | {s['wall_s']:.1f} | {s['peak_memory_mb']:.0f} | "
            f"{'/'.join(map(str, s['registered']))} |"
        )
    print(
        f"\nDense VGG16 extraction of {profile['image']} at {profile['size'][0]}x{profile['size'][1]}: "
        f"{profile['total_s']:.2f} s\n"
    )
    print("| part | s | share |\n|---|---|---|")
    for part, v in profile["parts_s"].items():
        print(f"| {part} | {v:.3f} | {v / profile['total_s']:.0%} |")


if __name__ == "__main__":
    main()
