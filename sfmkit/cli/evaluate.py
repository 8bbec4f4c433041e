"""``sfmkit evaluate strecha|aachen`` and ``sfmkit make-night``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import choices, console, handle_errors, summary_table
from sfmkit.cli.features import FeaturePreset, FeaturesOpt, MaxSizeOpt, feature_conf
from sfmkit.eval.methods import colmap_sift_runner, default_runners
from sfmkit.pipelines.evaluate_aachen import evaluate_aachen
from sfmkit.pipelines.evaluate_strecha import evaluate_strecha
from sfmkit.pipelines.make_night import make_night
from sfmkit.pipelines.reconstruct import ReconstructConf
from sfmkit.utils.report import write_report

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


@evaluate_app.command("strecha")
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


@evaluate_app.command("aachen")
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
def make_night_cmd(
    dataset: Annotated[Path, typer.Argument(help="A dataset with ground-truth cameras (Strecha layout).")],
    output: OutOpt,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the night simulation.")] = 0,
    strength: Annotated[
        float, typer.Option("--strength", help="0 = dim evening, 1 = dark street; larger is harder.")
    ] = 1.0,
    max_size: Annotated[int, typer.Option("--max-size", help="Longer side of the written images.")] = 1024,
    night_images: Annotated[
        Path | None,
        typer.Option(
            "--night-images",
            help="Relit night photos of the same cameras, same names (e.g. images_night/ from "
            "'sfmkit synth --lighting both'); replaces the 2D simulation.",
        ),
    ] = None,
) -> None:
    """Aachen-style day/night subsets (a PROXY for Aachen Day-Night, not Aachen): one subset per
    image, in which that image becomes a simulated night photo."""
    start = time.perf_counter()
    folders = make_night(
        dataset, output, seed=seed, strength=strength, max_size=max_size, night_images=night_images
    )
    write_report(
        output,
        "make-night",
        subsets=[f.name for f in folders],
        strength=strength,
        seed=seed,
        night_images=None if night_images is None else str(night_images),
    )
    summary_table(
        "make-night (a proxy for Aachen Day-Night, not Aachen)",
        [("subsets", len(folders)), ("folder", output), ("time", f"{time.perf_counter() - start:.1f} s")],
    )


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
    app.command("make-night")(make_night_cmd)
