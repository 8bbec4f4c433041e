"""``sfmkit build-patches``, ``sfmkit train keypoints|descriptor`` and ``sfmkit evaluate
patches``: the learned multiscale keypoints and triplet descriptors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sfmkit.cli.common import command_line, console, finish, handle_errors, summary_table
from sfmkit.cli.features import DeviceOpt
from sfmkit.errors import SfmkitError
from sfmkit.utils.report import write_report

PatchFiles = Annotated[list[Path], typer.Argument(help="Patch files from 'sfmkit build-patches'.")]
ModelOut = Annotated[Path, typer.Option("--output", "-o", help="Model file to write (.pt).")]


@handle_errors
def build_patches_cmd(
    model: Annotated[Path, typer.Argument(help="COLMAP model folder (cameras, images, points3D).")],
    images: Annotated[Path, typer.Argument(help="The images the model was made from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Patches file to write (.h5).")],
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="Keypoint scales: an sfmkit feature file with scales or a COLMAP database.db "
            "(default: found beside the model).",
        ),
    ] = None,
    scale_factor: Annotated[
        float, typer.Option("--scale-factor", help="Patch side / keypoint scale.")
    ] = 12.0,
    max_points: Annotated[int, typer.Option("--max-points", help="3D points sampled (0: all).")] = 5000,
    max_views: Annotated[int, typer.Option("--max-views", help="Observations per point.")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Patches of SfM points at their scales (positives, jittered copies, negatives)."""
    from sfmkit.train.patches import PatchConf, build_patches

    conf = PatchConf(scale_factor=scale_factor, max_points=max_points, max_views=max_views, seed=seed)
    start = time.perf_counter()
    stats = build_patches(model, images, output, conf, features=features)
    rows: list[tuple[str, Any]] = [
        (k, stats[k]) for k in ("images", "tracks", "positives", "jittered", "negatives")
    ]
    rows.append(("patches per side", ", ".join(f"{k}: {v}" for k, v in stats["per_size"].items())))
    if stats["skipped_images"]:
        rows.append(("skipped images", len(stats["skipped_images"])))
    finish(output.parent, "build-patches", conf, output, time.perf_counter() - start, stats, rows)


def _check_output(output: Path) -> None:
    if output.suffix not in (".pt", ".pth"):
        raise SfmkitError(f"the model file must end in .pt, got {output}")


def _train_summary(title: str, output: Path, card: dict[str, Any], seconds: float) -> None:
    write_report(
        output.parent, title, config=card["conf"], output=output, card=card, seconds=round(seconds, 1)
    )
    summary_table(
        title,
        [
            ("model", output),
            ("steps", card["steps_done"]),
            ("loss first / last 50 steps", f"{card['loss_first_50']:.4f} / {card['loss_last_50']:.4f}"),
            ("size", f"{output.stat().st_size / 1e6:.2f} MB"),
            ("time", f"{seconds:.1f} s"),
        ],
    )


@handle_errors
def train_keypoints_cmd(
    ctx: typer.Context,
    patches: PatchFiles,
    output: ModelOut = Path("multiscale-kp-detector.pt"),
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 1000,
    batch: Annotated[int, typer.Option("--batch", help="Positives + mined negatives per step.")] = 32,
    width: Annotated[int, typer.Option("--width", help="Channels d of the recursive block.")] = 64,
    hinge_weight: Annotated[float, typer.Option("--hinge-weight", help="lambda of the loss.")] = 0.5,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.01,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the multiscale keypoint detector (resumable)."""
    from sfmkit.train.keypoints import TrainDetectorConf, train_detector

    _check_output(output)
    conf = TrainDetectorConf(
        width=width, batch=batch, hinge_weight=hinge_weight, steps=steps, lr=lr, seed=seed
    )
    start = time.perf_counter()
    card = train_detector(patches, output, conf, device=device, command=command_line(ctx))
    _train_summary("train keypoints", output, card, time.perf_counter() - start)


@handle_errors
def train_descriptor_cmd(
    ctx: typer.Context,
    patches: PatchFiles,
    output: ModelOut = Path("multiscale-kp-descriptor.pt"),
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 1000,
    batch: Annotated[int, typer.Option("--batch", help="Points per step (two views each).")] = 64,
    margin: Annotated[float, typer.Option("--margin", help="Triplet margin.")] = 0.2,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.01,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the triplet patch descriptor (resumable)."""
    from sfmkit.train.keypoints import TrainDescriptorConf, train_descriptor

    _check_output(output)
    conf = TrainDescriptorConf(batch=batch, margin=margin, steps=steps, lr=lr, seed=seed)
    start = time.perf_counter()
    card = train_descriptor(patches, output, conf, device=device, command=command_line(ctx))
    _train_summary("train descriptor", output, card, time.perf_counter() - start)


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


def register(app: typer.Typer, train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    app.command("build-patches")(build_patches_cmd)
    train_app.command("keypoints")(train_keypoints_cmd)
    train_app.command("descriptor")(train_descriptor_cmd)
    evaluate_app.command("patches")(evaluate_patches_cmd)
