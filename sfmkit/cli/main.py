"""The ``sfmkit`` command."""

from __future__ import annotations

from typing import Annotated

import typer

from sfmkit import __version__
from sfmkit.cli import datasets, evaluate, localize, pairs, reconstruct, stages, train
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


# one module per command group, each registering only its own commands
stages.register(app)
reconstruct.register(app)
datasets.register(app)
train.register(app)
localize.register(app)
pairs.register(app)
evaluate.register(app)


def main() -> None:
    app()
