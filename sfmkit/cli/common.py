"""Shared CLI plumbing: logging, errors, choices, summary tables."""

from __future__ import annotations

import functools
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from sfmkit.errors import SfmkitError
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.report import write_report

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)
logger = logging.getLogger("sfmkit")


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A str Enum for Typer choices (``--features dense-vgg16``)."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=err_console, show_path=False, show_time=False, markup=False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level)
    try:
        import pycolmap

        pycolmap.logging.minloglevel = 0 if verbose > 1 else 2  # glog: 0 info, 1 warning, 2 error
    except (ImportError, AttributeError):
        pass


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def handle_errors(func: F) -> F:
    """Run a command: user errors become one red line and exit status 2, Ctrl-C / SIGTERM
    exit 130 after finished items are saved (stage writers flush on the way out)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return func(*args, **kwargs)
        except SfmkitError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted[/]: finished items are saved; run the same command again to resume",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except PermissionError as exc:
            err_console.print(
                f"[bold red]error:[/] permission denied: {exc.filename}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno is None:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            err_console.print(f"[bold red]error:[/] {exc.strerror}{where}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


def summary_table(title: str, rows: Iterable[tuple[str, Any]]) -> None:
    """Print a two-column summary at the end of a command."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, _fmt(value))
    console.print(table)


def finish(
    out_dir: Path,
    command: str,
    conf: Any,
    output: Path,
    seconds: float,
    counts: dict[str, Any],
    rows: list[tuple[str, Any]],
    **extra: Any,
) -> None:
    """End a stage command: its section of ``report.json`` and its summary table."""
    write_report(
        out_dir,
        command,
        config=conf_to_dict(conf),
        output=output,
        counts=counts,
        timings={command: round(seconds, 3)},
        **extra,
    )
    summary_table(command, [("output", output), *rows, ("time", f"{seconds:.1f} s")])


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def timings_rows(timings: dict[str, float]) -> list[tuple[str, str]]:
    return [(f"time {k}", f"{v:.1f} s") for k, v in timings.items()]


def is_tty() -> bool:
    return sys.stderr.isatty()


def command_line(ctx: typer.Context) -> str:
    """The running command as a shell line rebuilt from its parsed parameters (every option
    spelled out, so the line reproduces the run even when defaults change)."""
    words: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or param.name is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if param.param_type_name == "argument":
            words += [str(v) for v in values]
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            if value:
                words.append(flag)
            continue
        for v in values:
            words += [flag, str(getattr(v, "value", v))]
    return " ".join([ctx.command_path, *(shlex.quote(w) for w in words)])
