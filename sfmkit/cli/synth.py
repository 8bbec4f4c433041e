"""``sfmkit synth``: rendered scenes with exact ground truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import choices, finish, handle_errors
from sfmkit.errors import SfmkitError
from sfmkit.pipelines.synth import FORMATS, LIGHTING_CHOICES, SynthConf, synthesize
from sfmkit.synth.scenes import SCENES

SceneKind = choices("SceneKind", SCENES)
Lighting = choices("Lighting", LIGHTING_CHOICES)
ImageFormat = choices("ImageFormat", FORMATS)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SfmkitError(f"--size must look like 640x480, got {text!r}") from None
    return w, h


@handle_errors
def synth_cmd(
    output: Annotated[Path, typer.Argument(help="Output dataset folder.")],
    scene: Annotated[SceneKind, typer.Option("--scene", help="Scene and camera layout.")] = SceneKind(
        "orbit"
    ),  # type: ignore[valid-type,call-arg]
    n_images: Annotated[int, typer.Option("--n-images", "-n", help="Number of cameras.")] = 10,
    size: Annotated[str, typer.Option("--size", help="Image size WxH.")] = "640x480",
    seed: Annotated[int, typer.Option("--seed", help="Seed of everything random.")] = 0,
    lighting: Annotated[
        Lighting,  # type: ignore[valid-type]
        typer.Option("--lighting", help="day, night (sodium lamps), or both (images/ and images_night/)."),
    ] = Lighting("day"),  # type: ignore[call-arg]
    textures: Annotated[
        Path | None, typer.Option("--textures", help="Texture the scene with crops of these photos.")
    ] = None,
    detail: Annotated[float, typer.Option("--detail", help="Tessellation density factor.")] = 1.0,
    depth: Annotated[bool, typer.Option("--depth", help="Also write depth maps (depth.h5).")] = False,
    points: Annotated[
        int, typer.Option("--points", help="Surface points for the ground-truth tracks.")
    ] = 20000,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="jpg (with EXIF) or png.")
    ] = ImageFormat("jpg"),  # type: ignore[valid-type,call-arg]
) -> None:
    """Render a procedural textured scene with exact cameras (COLMAP model, Strecha files, mesh)."""
    conf = SynthConf(
        scene=scene.value,
        n_images=n_images,
        size=_size(size),
        seed=seed,
        lighting=lighting.value,
        detail=detail,
        textures=None if textures is None else str(textures),
        depth=depth,
        points=points,
        image_format=image_format.value,
    )
    start = time.perf_counter()
    result = synthesize(conf, output)
    rows = [(k, v) for k, v in result.counts.items()]
    finish(
        output,
        "synth",
        conf,
        output,
        time.perf_counter() - start,
        result.counts,
        rows,
        timings_detail=result.timings,
    )


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_cmd)
