"""The reconstruction methods that evaluations compare, behind one call signature."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pycolmap

from sfmkit.io.images import list_images
from sfmkit.pipelines.colmap_sift import run_colmap_sift
from sfmkit.pipelines.reconstruct import ReconstructConf, reconstruct

METHODS = ("sfmkit", "colmap-sift")


@dataclass(frozen=True)
class MethodResult:
    """Attributes:
    reconstruction: the largest model (None if nothing was reconstructed).
    timings: seconds per stage, with ``total``.
    path: folder of the model.
    """

    reconstruction: pycolmap.Reconstruction | None
    timings: dict[str, float]
    path: Path


#: (image folder, image names or None for all, output folder, known K file or None) -> result
Runner = Callable[[Path, Sequence[str] | None, Path, Path | None], MethodResult]


def sfmkit_runner(conf: ReconstructConf) -> Runner:
    """sfmkit's pipeline with ``conf`` (the intrinsics, when given, fixed)."""

    def run(images: Path, names: Sequence[str] | None, out: Path, intrinsics: Path | None) -> MethodResult:
        camera = replace(conf.mapping.camera, intrinsics=None if intrinsics is None else str(intrinsics))
        job = replace(conf, mapping=replace(conf.mapping, camera=camera))
        result = reconstruct(job, images, out, image_names=names)
        return MethodResult(result.mapping.reconstruction, result.timings, result.mapping.path)

    return run


def colmap_sift_runner(camera_mode: str = "auto") -> Runner:
    """COLMAP's own SIFT pipeline through pycolmap.

    ``camera_mode`` is COLMAP's, or ``from-scene``: one shared camera when the image folder
    holds a ``K.txt`` (Strecha scenes, rendered scenes without zoom), else ``auto`` (cameras
    grouped by EXIF, as COLMAP does).
    """

    def run(images: Path, names: Sequence[str] | None, out: Path, intrinsics: Path | None) -> MethodResult:
        start = time.perf_counter()
        chosen = list(names) if names is not None else list_images(images).names
        mode = camera_mode
        if mode == "from-scene":
            mode = "single" if (Path(images) / "K.txt").is_file() else "auto"
        result = run_colmap_sift(images, chosen, out, intrinsics=intrinsics, camera_mode=mode)
        timings = {**result.timings, "total": round(time.perf_counter() - start, 3)}
        return MethodResult(result.reconstruction, timings, result.path)

    return run


def default_runners(
    methods: Sequence[str], conf: ReconstructConf, camera_mode: str = "auto"
) -> dict[str, Runner]:
    """Runners for method names among :data:`METHODS`."""
    runners: dict[str, Runner] = {}
    for method in methods:
        if method == "sfmkit":
            runners[method] = sfmkit_runner(conf)
        elif method == "colmap-sift":
            runners[method] = colmap_sift_runner(camera_mode)
        else:
            raise ValueError(f"unknown method {method!r}; choose among {METHODS}")
    return runners
