"""``sfmkit reconstruct``: every stage with sensible defaults."""

from __future__ import annotations

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
    OverwriteOpt,
    RayAddressOpt,
    ReconstructPairsOpt,
    RefineOpt,
    ThreadsOpt,
    WeightsOpt,
    WorkersOpt,
    choices,
    executor_conf,
    feature_conf,
    handle_errors,
    logger,
    map_conf,
    mapping_rows,
    print_unregistered,
    read_image_list,
    summary_table,
    timings_rows,
)
from sfmkit.errors import SfmkitError
from sfmkit.io.images import DEFAULT_MAX_PIXELS
from sfmkit.matching import match as match_mod
from sfmkit.pipelines.reconstruct import REFINE_CHOICES, ReconstructConf, reconstruct
from sfmkit.retrieval.pair_filter import PairFilterConf

RefineChoice = choices("RefineChoice", REFINE_CHOICES)
MatcherChoice = choices("MatcherChoice", match_mod.CONFS)


def default_output(images: Path) -> Path:
    """The output folder when ``-o`` is not given: ``sfmkit`` beside a folder called
    ``images`` (COLMAP's project layout), else ``<images>-sfmkit`` beside it."""
    images = Path(images).resolve()
    return images.parent / ("sfmkit" if images.name == "images" else f"{images.name}-sfmkit")


@handle_errors
def reconstruct_cmd(
    images: ImagesArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output folder (default: beside IMAGES, 'sfmkit' when IMAGES is called 'images', "
            "else '<IMAGES>-sfmkit').",
        ),
    ] = None,
    features: FeaturesOpt = FeaturePreset("dense-vgg16"),  # type: ignore[call-arg]
    max_size: MaxSizeOpt = None,
    weights: WeightsOpt = None,
    matcher: Annotated[
        MatcherChoice | None,
        typer.Option(
            "--matcher",
            help="Matcher preset (default: by feature type; lightglue for aliked, disk and xfeat).",
        ),
    ] = None,  # type: ignore[valid-type]
    pairs: ReconstructPairsOpt = "exhaustive",
    best_pairs: Annotated[
        int | None, typer.Option("--best-pairs", help="Keep each image's N pairs with most inliers.")
    ] = None,
    pair_filter: Annotated[
        str | None,
        typer.Option(
            "--pair-filter",
            help="Drop pairs before matching: getnet (the model's threshold) or getnet:SCORE (0-1).",
        ),
    ] = None,
    pair_filter_model: Annotated[
        Path | None,
        typer.Option(
            "--pair-filter-model", help="GetNet model for --pair-filter (default: the shipped one)."
        ),
    ] = None,
    refine: Annotated[
        RefineChoice | None,
        typer.Option(
            "--refine",
            help="Featuremetric keypoint adjustment before mapping: keypoints or none; keypoints+ba "
            "also adjusts the mapped model featuremetrically (written to OUT/sfm-ba, the final "
            "model). Default by feature type: keypoints+ba for dense VGG16, keypoints for "
            "multiscale-kp, none for SIFT and the peers.",
        ),
    ] = None,  # type: ignore[valid-type]
    camera_mode: CameraModeOpt = CameraMode("auto"),  # type: ignore[call-arg]
    camera_model: CameraModelOpt = "SIMPLE_RADIAL",
    intrinsics: IntrinsicsOpt = None,
    refine_intrinsics: RefineOpt = False,
    mapper: MapperOpt = Mapper("incremental"),  # type: ignore[call-arg]
    num_threads: ThreadsOpt = 1,
    device: DeviceOpt = "auto",
    image_list: ImageListOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    executor: ExecutorOpt = Executor("local"),  # type: ignore[call-arg]
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Images to a calibrated sparse model: extract, match, verify, refine, map."""
    run_on = executor_conf(executor.value, workers, ray_address)
    if pair_filter_model is not None and pair_filter is None:
        raise SfmkitError("--pair-filter-model needs --pair-filter (e.g. --pair-filter getnet)")
    conf = ReconstructConf(
        features=feature_conf(features.value, max_size, weights),
        matcher=None if matcher is None else match_mod.CONFS[matcher.value],
        pairs=pairs,
        best_pairs=best_pairs,
        refine=None if refine is None else refine.value,
        pair_filter=None
        if pair_filter is None
        else PairFilterConf.parse(pair_filter, None if pair_filter_model is None else str(pair_filter_model)),
        mapping=map_conf(
            camera_mode.value, camera_model, intrinsics, refine_intrinsics, num_threads, mapper.value
        ),
    )
    if output is None:
        output = default_output(images)
        logger.info("writing to %s (choose another folder with -o)", output)
    result = reconstruct(
        conf,
        images,
        output,
        image_names=read_image_list(image_list),
        overwrite=overwrite,
        device=device,
        max_pixels=max_pixels,
        executor=run_on,
    )
    stats = result.mapping.stats
    skipped = result.counts.get("skipped_images") or {}
    rows = [("output", output), ("model", result.mapping.path), *mapping_rows(stats)]
    rows.append(
        ("extraction size (longer side, at most)", f"{result.counts['extract'].get('extraction_size')} px")
    )
    if skipped:
        rows.append(("images skipped (unreadable)", len(skipped)))
    if "filter" in result.counts:
        kept = result.counts["filter"]
        rows.append(("pairs kept / dropped by the filter", f"{kept['kept']} / {kept['dropped']}"))
    peak = result.peak_memory_mb.get("max", 0.0)
    rows += [
        *timings_rows(result.timings),
        ("peak memory", f"{peak / 1024:.2f} GB"),
        ("report", result.report),
    ]
    summary_table("reconstruct", rows)
    print_unregistered(result.mapping)


def register(app: typer.Typer) -> None:
    app.command("reconstruct")(reconstruct_cmd)
