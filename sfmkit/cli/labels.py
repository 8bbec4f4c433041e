"""``sfmkit build-gl3d-labels``: GL3D overlap ratios and masks from a model and a mesh."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import finish, handle_errors
from sfmkit.labels.overlap import LabelThresholds
from sfmkit.pipelines.build_gl3d_labels import LabelsConf, build_gl3d_labels


def _interval(text: str, option: str) -> tuple[float, float]:
    from sfmkit.errors import SfmkitError

    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise SfmkitError(f"{option} must look like 0.5:1.0, got {text!r}") from None
    return lo, hi


@handle_errors
def labels_cmd(
    model: Annotated[Path, typer.Argument(help="COLMAP model folder (cameras, images, points3D).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Labels file to write (.h5).")],
    mesh: Annotated[Path | None, typer.Option("--mesh", help="Surface mesh of the scene (PLY, OBJ).")] = None,
    mesh_from_model: Annotated[
        bool, typer.Option("--mesh-from-model", help="Poisson surface from the model's points.")
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Image folder, for the mask figure (default MODEL/../images)."),
    ] = None,
    gl3d_text: Annotated[
        Path | None,
        typer.Option("--gl3d-text", help="Also write GL3D's common_track.txt / mesh_overlap.txt here."),
    ] = None,
    t_sfm: Annotated[float, typer.Option("--t-sfm", help="CT at or above which CO = 1.")] = 0.2,
    strong: Annotated[str, typer.Option("--strong", help="CO interval of strong positives.")] = "0.5:1.0",
    weak: Annotated[str, typer.Option("--weak", help="CO interval of weak positives.")] = "0.05:0.2",
    grid: Annotated[int, typer.Option("--grid", help="Rays on the longer image side, for masks.")] = 128,
    mask_size: Annotated[int, typer.Option("--mask-size", help="Side of the stored masks.")] = 32,
    poisson_depth: Annotated[
        int, typer.Option("--poisson-depth", help="Octree depth (--mesh-from-model).")
    ] = 9,
    plot_pairs: Annotated[int, typer.Option("--plot-pairs", help="Pairs in the mask PNG (0: none).")] = 3,
) -> None:
    """Overlap labels for training: CT, MO, CO matrices, strong/weak pairs, 32x32 overlap masks."""
    conf = LabelsConf(
        mesh=None if mesh is None else str(mesh),
        mesh_from_model=mesh_from_model,
        poisson_depth=poisson_depth,
        grid=grid,
        mask_size=mask_size,
        thresholds=LabelThresholds(t_sfm, _interval(strong, "--strong"), _interval(weak, "--weak")),
        plot_pairs=plot_pairs,
    )
    start = time.perf_counter()
    result = build_gl3d_labels(model, output, conf, images_dir=images, gl3d_text=gl3d_text)
    rows = [(k.replace("_", " "), v) for k, v in result.counts.items()]
    rows += [("mesh", result.mesh_path), ("mask figure", result.plot or "-")]
    finish(
        output.parent,
        "build-gl3d-labels",
        conf,
        output,
        time.perf_counter() - start,
        result.counts,
        rows,
        timings_detail=result.timings,
    )


def register(app: typer.Typer) -> None:
    app.command("build-gl3d-labels")(labels_cmd)
