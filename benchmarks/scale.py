"""Scaling: time and peak memory of every stage of ``reconstruct --pairs retrieval:K`` against
the number of images, on rendered drone surveys (``sfmkit synth --scene survey``) with exact
ground truth; the local executor against Ray with 2 workers; incremental against global
(GLOMAP) mapping of the same verified matches; COLMAP's SIFT pipeline matching the same
retrieval pairs (its time has no retrieval in it); the retrieval pairs against the exact
cameras (how many can overlap at all, and how many of each kind verification kept). Prints
JSON lines and markdown tables, and draws a log-log plot.

    python benchmarks/scale.py -o bench_out/scale --sizes 250 500 1000 2000 \\
        [--image-size 320x240] [--top-k 10] [--ray-up-to 500] [--mappers global] [--threads -1]
        [--incremental-up-to 1000]

Each ``reconstruct`` runs in its own process (``sfmkit reconstruct``), so its per-stage peak
memory (report.json, the driver process) is its own; with Ray the workers' memory is not in it.
Scenes and runs already in the output folder are reused (delete them to measure again). The
mappers use every core (``--threads -1``), as a user mapping thousands of images would.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time

# before pycolmap (see sfmkit/__init__.py)
import zlib  # noqa: F401
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pycolmap

from sfmkit.eval.strecha import score_model
from sfmkit.io.h5 import H5Reader
from sfmkit.io.images import list_images
from sfmkit.io.matches import read_verified
from sfmkit.io.pairs import read_pairs
from sfmkit.io.strecha import read_scene
from sfmkit.pipelines.colmap_sift import run_colmap_sift
from sfmkit.reconstruction.mapping import MapConf, map_images
from sfmkit.synth.scenes import SURVEY_ALTITUDE
from sfmkit.utils.plots import plot_isolated, save_figure

#: the stages whose time and memory are compared across sizes
STAGES = ("extract", "retrieve", "match", "verify", "refine", "map")


def synth(out: Path, n: int, size: str, seed: int) -> Path:
    """The survey scene of ``n`` images (rendered once, then reused)."""
    scene = out / f"survey-{n}"
    if not (scene / "synth.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "sfmkit",
            "synth",
            str(scene),
            "--scene",
            "survey",
            "-n",
            str(n),
            "--size",
            size,
        ]
        subprocess.run([*cmd, "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    return scene


def run_reconstruct(
    scene: Path,
    work: Path,
    top_k: int,
    executor: str,
    workers: int,
    threads: int,
    mapper: str = "incremental",
) -> dict[str, Any]:
    """``sfmkit reconstruct`` in its own process; its report section and the wall time."""
    report = work / "report.json"
    wall = None
    if not report.is_file() or "reconstruct" not in json.loads(report.read_text()):
        cmd = [sys.executable, "-m", "sfmkit", "reconstruct", str(scene / "images"), "-o", str(work)]
        cmd += ["--pairs", f"retrieval:{top_k}", "--executor", executor, "--num-threads", str(threads)]
        if executor == "ray":
            cmd += ["--workers", str(workers)]
        if mapper != "incremental":
            cmd += ["--mapper", mapper]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
    section = json.loads(report.read_text())["reconstruct"]
    made_with = section.get("config", {}).get("mapping", {}).get("mapper", "incremental")
    if made_with != mapper:
        raise SystemExit(
            f"{work} holds a run with the {made_with} mapper, not {mapper}: delete it to measure again"
        )
    section["wall_s"] = wall
    return section


def pair_truth(scene: Path, section: dict[str, Any], min_matches: int = 15) -> dict[str, int]:
    """The run's retrieval pairs against the exact cameras: how many can overlap at all (the
    second centre inside the first view's ground footprint, nadir views at ``SURVEY_ALTITUDE``),
    and how many of each kind verification kept (``min_matches`` inliers: the mapper's rule)."""
    cams = read_scene(scene)
    pairs = read_pairs(Path(section["inputs"]["pairs"]))
    out = {"pairs": len(pairs), "can_overlap": 0, "kept_possible": 0, "kept_impossible": 0}
    with H5Reader(Path(section["outputs"]["verified"]), "verified") as ver:
        for a, b in pairs:
            cam = cams[a]
            d = cam.pose.rotation @ (cams[b].pose.center - cam.pose.center)
            possible = all(abs(d[k]) < SURVEY_ALTITUDE * cam.size[k] / cam.K[k, k] for k in (0, 1))
            m = read_verified(ver, (a, b))
            kept = m is not None and len(m) >= min_matches
            out["can_overlap"] += possible
            out["kept_possible" if possible else "kept_impossible"] += kept
    return out


def score(scene: Path, model: Path | None) -> dict[str, Any]:
    rec = pycolmap.Reconstruction(str(model)) if model is not None and model.is_dir() else None
    s = score_model(scene, rec)
    pos = s.get("position_m", {})
    return {
        "registered": s["registered"],
        "total": s["total"],
        "position_cm": {k: round(v * 100, 2) for k, v in pos.items()},
        "rotation_deg": s.get("rotation_deg"),
    }


def cached(path: Path, compute: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``compute(*args)``, saved to ``path`` and read from it on the next run."""
    if path.is_file():
        return json.loads(path.read_text())
    out = compute(*args)
    path.write_text(json.dumps(out, indent=2, default=str))
    return out


def remap(scene: Path, section: dict[str, Any], work: Path, mapper: str, threads: int) -> dict[str, Any]:
    """Map the run's verified matches again with ``mapper``: its time and scores."""
    outputs = section["outputs"]
    start = time.perf_counter()
    result = map_images(
        replace(MapConf(), mapper=mapper, num_threads=threads),
        scene / "images",
        Path(outputs["verified"]),
        Path(section["inputs"]["pairs"]),
        work / f"sfm-{mapper}",
        features=Path(outputs["refined"] or outputs["features"]),
        overwrite=True,
    )
    return {"map_s": round(time.perf_counter() - start, 1), **score(scene, result.path)}


def colmap_sift(scene: Path, section: dict[str, Any], work: Path) -> dict[str, Any]:
    """COLMAP's SIFT pipeline on the same images and the same (sfmkit retrieval) pairs."""
    names = list_images(scene / "images").names
    result = run_colmap_sift(
        scene / "images", names, work / "colmap-sift", pairs=Path(section["inputs"]["pairs"])
    )
    return {"seconds": result.timings, **score(scene, result.path)}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (the exponent of y ~ x^a)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / den, 2) if den else None


def plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    from matplotlib.figure import Figure

    local = sorted((r for r in rows if r["executor"] == "local"), key=lambda r: r["n"])
    ns = [r["n"] for r in local]
    fig = Figure(figsize=(11, 4.2))
    ax_t, ax_m = fig.subplots(1, 2)
    for stage in STAGES:
        times = [r["seconds"].get(stage) for r in local]
        if all(t for t in times):
            ax_t.loglog(ns, times, "o-", label=stage)
        mems = [r["peak_mb"].get(stage) for r in local]
        if all(m for m in mems):
            ax_m.loglog(ns, mems, "o-", label=stage)
    ax_t.loglog(ns, [ns[0] and local[0]["seconds"]["total"] * n / ns[0] for n in ns], "k:", label="linear")
    ax_t.set(xlabel="images", ylabel="seconds", title="time per stage (local executor)")
    ax_m.set(xlabel="images", ylabel="peak resident memory (MB)", title="peak memory per stage")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out/scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--image-size", default="320x240")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray-up-to", type=int, default=500, help="Ray runs for sizes up to this")
    parser.add_argument("--threads", type=int, default=-1, help="mapper threads (-1: all cores)")
    parser.add_argument(
        "--sift-up-to", type=int, default=2000, help="COLMAP SIFT (on the same pairs) for sizes up to this"
    )
    parser.add_argument("--mappers", nargs="*", default=["global"], choices=["global", "hierarchical"])
    parser.add_argument(
        "--incremental-up-to",
        type=int,
        default=1000,
        help="larger sizes run reconstruct with the global mapper (incremental took > 56 min at 2,000)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pycolmap.logging.minloglevel = 2
    args.output.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    mapper_rows: list[dict[str, Any]] = []
    for n in args.sizes:
        start = time.perf_counter()
        scene = synth(args.output, n, args.image_size, args.seed)
        print(f"# survey-{n}: rendered or reused in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        executors = ["local"] + (["ray"] if n <= args.ray_up_to else [])
        for executor in executors:
            work = args.output / f"run-{n}-{executor}"
            own = "incremental" if n <= args.incremental_up_to else "global"
            section = run_reconstruct(scene, work, args.top_k, executor, args.workers, args.threads, own)
            model = section["outputs"].get("model")
            row = {
                "n": n,
                "executor": executor,
                "mapper": own,
                "seconds": section["timings"],
                "peak_mb": section.get("peak_memory_mb", {}),
                "wall_s": section["wall_s"],
                "pairs": section["counts"].get("retrieve", {}).get("pairs"),
                "pair_truth": pair_truth(scene, section),
                **score(scene, Path(model) if model else None),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if executor != "local":
                continue
            inc = {k: row[k] for k in ("registered", "total", "position_cm", "rotation_deg")}
            mapper_rows.append({"n": n, "mapper": own, "map_s": section["timings"].get("map"), **inc})
            for mapper in (m for m in args.mappers if m != own):
                out = cached(
                    work / f"mapper-{mapper}.json", remap, scene, section, work, mapper, args.threads
                )
                mapper_rows.append({"n": n, "mapper": mapper, **out})
                print(json.dumps(mapper_rows[-1]), flush=True)
            if n <= args.sift_up_to:
                sift = cached(work / "colmap-sift.json", colmap_sift, scene, section, work)
                rows.append({"n": n, "executor": "COLMAP SIFT", "peak_mb": {}, "wall_s": None, **sift})
                print(json.dumps(rows[-1]), flush=True)
    (args.output / "scale.json").write_text(json.dumps({"runs": rows, "mappers": mapper_rows}, indent=2))
    print_tables(rows, mapper_rows)
    plot_isolated(plot, args.output / "scale.png", rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_tables(rows: list[dict[str, Any]], mapper_rows: list[dict[str, Any]]) -> None:
    stages = [s for s in STAGES if any(s in r["seconds"] for r in rows)]
    print(
        "\n| images | executor | " + " | ".join(f"{s} (s)" for s in stages) + " | total (s) "
        "| peak MB (max stage) | registered | position median / mean (cm) |"
    )
    print("|---" * (len(stages) + 6) + "|")
    for r in rows:
        pos = r["position_cm"]
        run = r["executor"] + (f", {r['mapper']} mapper" if r.get("mapper") else "")
        cells = [str(r["n"]), run, *(_num(r["seconds"].get(s)) for s in stages)]
        cells += [_num(r["seconds"]["total"]), _num(r["peak_mb"].get("max"))]
        cells += [f"{r['registered']}/{r['total']}"]
        cells += [f"{pos['median']:.1f} / {pos['mean']:.1f}" if pos else "-"]
        print("| " + " | ".join(cells) + " |")
    local = sorted((r for r in rows if r["executor"] == "local"), key=lambda r: r["n"])
    if len(local) >= 2:
        ns = [r["n"] for r in local]
        print("\nlog-log slope against N (1 = linear), local executor:")
        print("| stage | time | peak memory |\n|---|---|---|")
        mixed = len({r.get("mapper") for r in local}) > 1
        for s in [*stages, "total"]:
            t = slope(ns, [r["seconds"].get(s) for r in local])
            if mixed and s in ("map", "total"):
                t = "(mappers differ between sizes)"
            m = slope(ns, [r["peak_mb"].get(s if s != "total" else "max") for r in local])
            print(f"| {s} | {t} | {m} |")
    truth = [r for r in rows if r.get("pair_truth")]
    if truth:
        print("\n| images | run | retrieval pairs | can overlap | kept among those | impossible kept |")
        print("|---|---|---|---|---|---|")
        for r in truth:
            t = r["pair_truth"]
            impossible = t["pairs"] - t["can_overlap"]
            print(
                f"| {r['n']} | {r['executor']} | {t['pairs']} | {t['can_overlap']} | {t['kept_possible']} "
                f"| {t['kept_impossible']} of {impossible} |"
            )
    if mapper_rows:
        print("\n| images | mapper | map (s) | registered | position median / mean (cm) | rotation (deg) |")
        print("|---|---|---|---|---|---|")
        for r in mapper_rows:
            pos, rot = r["position_cm"], r["rotation_deg"]
            cells = [str(r["n"]), r["mapper"], f"{r['map_s']:.0f}", f"{r['registered']}/{r['total']}"]
            cells += [f"{pos['median']:.1f} / {pos['mean']:.1f}" if pos else "-"]
            cells += [f"{rot['median']:.2f}" if rot else "-"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
