"""``sfmkit map``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sfmkit.cli.common import choices, console, handle_errors, summary_table
from sfmkit.reconstruction.cameras import CAMERA_MODES, CameraConf
from sfmkit.reconstruction.mapping import MapConf, MapResult, map_images
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.report import write_report

CameraMode = choices("CameraMode", CAMERA_MODES)

CameraModeOpt = Annotated[
    CameraMode,  # type: ignore[valid-type]
    typer.Option(
        "--camera-mode",
        help="Which images share a camera: auto (same size and EXIF camera), single, per-image, per-folder.",
    ),
]
CameraModelOpt = Annotated[
    str, typer.Option("--camera-model", help="COLMAP camera model when the calibration is unknown.")
]
IntrinsicsOpt = Annotated[
    Path | None, typer.Option("--intrinsics", help="Known calibration: K.txt (3x3, for the images as given).")
]
RefineOpt = Annotated[
    bool, typer.Option("--refine-intrinsics", help="With --intrinsics: refine them in bundle adjustment.")
]


def map_conf(camera_mode: str, camera_model: str, intrinsics: Path | None, refine: bool) -> MapConf:
    return MapConf(
        camera=CameraConf(
            mode=camera_mode,
            model=camera_model,
            intrinsics=None if intrinsics is None else str(intrinsics.resolve()),
            refine_intrinsics=refine,
        )
    )


def mapping_rows(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("images registered", f"{stats['registered']} / {stats['images']}")]
    if stats["registered"]:
        rows += [
            ("3D points", stats["points3D"]),
            ("mean track length", stats["mean_track_length"]),
            ("mean reprojection error", f"{stats['mean_reprojection_error_px']:.3f} px"),
        ]
    return rows


def print_unregistered(result: MapResult) -> None:
    missing = result.stats.get("unregistered") or []
    if missing:
        console.print(
            f"[yellow]not registered[/] ({len(missing)}): {', '.join(missing[:20])}",
            highlight=False,
            soft_wrap=True,
        )


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
) -> None:
    """Incremental mapping with pycolmap; writes the COLMAP model, model.ply and report.json."""
    conf = map_conf(camera_mode.value, camera_model, intrinsics, refine_intrinsics)
    start = time.perf_counter()
    result = map_images(conf, images, verified, pairs, output, features=features)
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


def register(app: typer.Typer) -> None:
    app.command("map")(map_cmd)
