"""``sfmkit localize``: find a close-up inside a wide image (FTFY)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import DeviceOpt, FactorsOpt, finish, handle_errors, parse_factors
from sfmkit.localize.search import LocalizeConf
from sfmkit.pipelines.localize import run_localize


@handle_errors
def localize_cmd(
    query: Annotated[Path, typer.Argument(help="The close-up image.")],
    source: Annotated[Path, typer.Argument(help="The wide image to search it in.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for boxes.json, boxes.png, report.json.")
    ] = Path("localize"),
    model: Annotated[
        Path | None, typer.Option("--model", help="FTFY model from 'sfmkit train localize'.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Boxes returned, best first.")] = 5,
    factors: FactorsOpt = "1 2 4 6 8 10",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the boxes here instead of OUTPUT/boxes.json.")
    ] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Boxes with confidences of the close-up in the source (full-resolution source pixels)."""
    conf = LocalizeConf(factors=parse_factors(factors), top_k=top_k)
    result = run_localize(query, source, output, conf, model=model, json_path=json_path, device=device)
    best = result.found
    rows = [
        ("model", result.model),
        ("tiles searched", best.tiles),
        ("best box", ", ".join(f"{v:.0f}" for v in best.boxes[0])),
        ("best confidence / factor", f"{best.confidence[0]:.3f} / {int(best.factor[0])}"),
        ("picture", result.picture),
    ]
    counts = {"boxes": len(best.boxes), "tiles": best.tiles}
    finish(output, "localize", conf, result.json_path, result.seconds, counts, rows)


def register(app: typer.Typer) -> None:
    app.command("localize")(localize_cmd)
