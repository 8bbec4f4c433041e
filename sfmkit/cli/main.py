"""The ``sfmkit`` command."""

from __future__ import annotations

from typing import Annotated

import typer

from sfmkit import __version__
from sfmkit.cli import evaluate as evaluate_cli
from sfmkit.cli import features as features_cli
from sfmkit.cli import keypoints as keypoints_cli
from sfmkit.cli import labels as labels_cli
from sfmkit.cli import mapping as mapping_cli
from sfmkit.cli import matching as matching_cli
from sfmkit.cli import reconstruct as reconstruct_cli
from sfmkit.cli import retrieval as retrieval_cli
from sfmkit.cli import synth as synth_cli
from sfmkit.cli import train as train_cli
from sfmkit.cli.common import is_tty, setup_logging
from sfmkit.utils import progress

app = typer.Typer(
    name="sfmkit",
    help="Learned Structure-from-Motion: dense CNN features, multi-homography RANSAC, pycolmap.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sfmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: pycolmap too).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide progress bars.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    setup_logging(verbose, quiet)
    progress.set_enabled(not no_progress and not quiet and is_tty())


features_cli.register(app)
matching_cli.register(app)
mapping_cli.register(app)
reconstruct_cli.register(app)
evaluate_cli.register(app)
synth_cli.register(app)
labels_cli.register(app)
retrieval_cli.register(app)
train_cli.register(app, evaluate_cli.evaluate_app)
keypoints_cli.register(app, train_cli.train_app, evaluate_cli.evaluate_app)


def main() -> None:
    app()
