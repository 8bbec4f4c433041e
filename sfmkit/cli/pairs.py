"""``sfmkit pair-verify`` (do two images show the same surface, and where?) and ``sfmkit
filter-pairs`` (drop the pairs GetNet calls different before matching)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import DeviceOpt, finish, handle_errors
from sfmkit.pipelines.pair_verify import run_pair_verify
from sfmkit.retrieval.pair_filter import PairFilterConf, filter_pairs

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", help="GetNet model ('sfmkit train pair-verify'; default: the shipped one)."),
]


@handle_errors
def pair_verify_cmd(
    image_a: Annotated[Path, typer.Argument(help="First image.")],
    image_b: Annotated[Path, typer.Argument(help="Second image.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for pair.json, pair.png, report.json.")
    ] = Path("pair-verify"),
    model: ModelOpt = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Score (0-1) at or above which the pair is called same.")
    ] = 0.5,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the result here instead of OUTPUT/pair.json.")
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Score, decision and both predicted regions (pixels of the input images), with a picture."""
    result = run_pair_verify(
        image_a, image_b, output, model=model, threshold=threshold, json_path=json_path, device=device
    )
    c = result.check
    rows = [
        ("model", result.model),
        ("score / same", f"{c.score:.3f} / {c.same}"),
        ("region a", ", ".join(f"{v:.0f}" for v in c.region_a)),
        ("region b", ", ".join(f"{v:.0f}" for v in c.region_b)),
        ("picture", result.picture),
    ]
    conf = {"model": str(result.model), "threshold": threshold}
    finish(output, "pair-verify", conf, result.json_path, result.seconds, {"same": int(c.same)}, rows)


@handle_errors
def filter_pairs_cmd(
    pairs: Annotated[Path, typer.Argument(help="Pairs file (e.g. from 'sfmkit retrieve').")],
    images: Annotated[Path, typer.Argument(help="The image folder the pairs name images of.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("."),
    pair_filter: Annotated[
        str, typer.Option("--filter", help="getnet, or getnet:SCORE to keep pairs scoring at least SCORE.")
    ] = "getnet",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Drop the pairs the pair verifier calls different; record every score."""
    conf = PairFilterConf.parse(pair_filter, None if model is None else str(model))
    result = filter_pairs(conf, images, pairs, output, device=device)
    rows = [(k, v) for k, v in result.counts.items()] + [("record", result.record)]
    finish(output, "filter-pairs", conf, result.kept, result.seconds, result.counts, rows)


def register(app: typer.Typer) -> None:
    app.command("pair-verify")(pair_verify_cmd)
    app.command("filter-pairs")(filter_pairs_cmd)
