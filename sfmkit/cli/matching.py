"""``sfmkit match`` and ``sfmkit verify``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from sfmkit.cli.common import choices, finish, handle_errors
from sfmkit.cli.features import DeviceOpt, OverwriteOpt
from sfmkit.errors import SfmkitError
from sfmkit.geometry import verify as verify_mod
from sfmkit.io.h5 import json_attr, list_items, read_file_attrs
from sfmkit.io.pairs import make_pairs
from sfmkit.matching import match as match_mod
from sfmkit.utils.config import replace

MatcherPreset = choices("MatcherPreset", match_mod.CONFS)
VerifyPreset = choices("VerifyPreset", verify_mod.CONFS)

PairsOpt = Annotated[str, typer.Option("--pairs", help="exhaustive, sequential:N, or a pairs file.")]
ReconstructPairsOpt = Annotated[
    str,
    typer.Option(
        "--pairs",
        help="exhaustive, sequential:N, retrieval:K (each image with its K nearest by global "
        "descriptor; see 'sfmkit retrieve'), or a pairs file.",
    ),
]


def _out(output: Path | None, near: Path) -> Path:
    return output if output is not None else Path(near).parent


@handle_errors
def match_cmd(
    features: Annotated[Path, typer.Argument(help="Feature file made by `sfmkit extract`.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: beside FEATURES).")
    ] = None,
    pairs: PairsOpt = "exhaustive",
    matcher: Annotated[
        MatcherPreset | None, typer.Option("--matcher", help="Matcher preset (default: by feature type).")
    ] = None,  # type: ignore[valid-type]
    fine_radius: Annotated[
        int | None, typer.Option("--fine-radius", help="Extra pool3 cells searched around each pool4 match.")
    ] = None,
    ratio: Annotated[float | None, typer.Option("--ratio", help="Lowe ratio test (both directions).")] = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Match image pairs: mutual nearest neighbours (coarse-to-fine for dense features)."""
    if not features.is_file():
        raise SfmkitError(f"feature file {features} does not exist; run `sfmkit extract` first")
    out = _out(output, features)
    kind = read_file_attrs(features).get("extractor", "dense_vgg")
    preset = matcher.value if matcher is not None else match_mod.DEFAULT_FOR_FEATURES[kind]
    conf = replace(match_mod.CONFS[preset], fine_radius=fine_radius, ratio=ratio)
    start = time.perf_counter()
    names = sorted(k[0] for k in list_items(features, 1))
    pairs_path = make_pairs(pairs, names, out)
    path = match_mod.match(conf, features, pairs_path, out, overwrite=overwrite, device=device)
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run")
    rows = [("pairs file", pairs_path), ("pairs computed / reused", f"{run['computed']} / {run['reused']}")]
    finish(out, "match", conf, path, seconds, run, rows, pairs=pairs_path)


@handle_errors
def verify_cmd(
    matches: Annotated[Path, typer.Argument(help="Matches file made by `sfmkit match`.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Pairs file (as written by `sfmkit match`).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output folder (default: beside MATCHES).")
    ] = None,
    features: Annotated[
        Path | None, typer.Option("--features", help="Feature file (default: the one MATCHES was made from).")
    ] = None,
    method: Annotated[VerifyPreset, typer.Option("--method", help="Verification preset.")] = VerifyPreset(
        "multi-homography"
    ),  # type: ignore[valid-type,call-arg]
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Inlier threshold, full-resolution pixels.")
    ] = None,
    max_homographies: Annotated[int | None, typer.Option("--max-homographies")] = None,
    min_inliers: Annotated[int | None, typer.Option("--min-inliers")] = None,
    best_pairs: Annotated[
        int | None, typer.Option("--best-pairs", help="Keep each image's N pairs with most inliers.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Verify matches with multi-homography RANSAC."""
    if not matches.is_file():
        raise SfmkitError(f"matches file {matches} does not exist; run `sfmkit match` first")
    out = _out(output, matches)
    conf = replace(
        verify_mod.CONFS[method.value],
        threshold=threshold,
        max_homographies=max_homographies,
        min_inliers=min_inliers,
        best_pairs=best_pairs,
        seed=seed,
    )
    start = time.perf_counter()
    path = verify_mod.verify(conf, matches, pairs, out, features=features, overwrite=overwrite)
    seconds = time.perf_counter() - start
    run = json_attr(path, "last_run")
    rows = [("pairs with inliers", f"{run['pairs_with_inliers']} / {run['pairs']}")]
    finish(out, "verify", conf, path, seconds, run, rows)


def register(app: typer.Typer) -> None:
    app.command("match")(match_cmd)
    app.command("verify")(verify_cmd)
