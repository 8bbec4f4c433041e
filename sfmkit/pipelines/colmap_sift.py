"""COLMAP's own SIFT pipeline through pycolmap (the classic baseline of every benchmark):
SIFT extraction, exhaustive matching with COLMAP's matcher and geometric verification, and
incremental mapping, all with COLMAP's defaults."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pycolmap

from sfmkit.io.intrinsics import read_intrinsics
from sfmkit.reconstruction.mapping import largest_model
from sfmkit.utils.timing import StageTimer


@dataclass(frozen=True)
class ColmapSiftResult:
    reconstruction: pycolmap.Reconstruction | None
    timings: dict[str, float]
    path: Path


def run_colmap_sift(
    image_dir: Path,
    image_names: Sequence[str],
    out_dir: Path,
    *,
    intrinsics: Path | None = None,
    camera_mode: str = "auto",
    seed: int = 0,
    pairs: Path | None = None,
) -> ColmapSiftResult:
    """Reconstruct ``image_names`` with COLMAP's SIFT pipeline.

    ``camera_mode`` is COLMAP's (``auto``, ``single``, ``per-image``, ``per-folder``); with
    ``intrinsics`` every image gets that fixed PINHOLE camera. ``pairs``: match only the pairs
    of this file (one ``name1 name2`` per line, e.g. sfmkit's retrieval pairs) instead of every
    pair, as on large collections."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    db = out_dir / "database.db"
    timer = StageTimer()
    reader = pycolmap.ImageReaderOptions()
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = seed
    if intrinsics is not None:
        k = read_intrinsics(intrinsics)
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(f"{v:.10g}" for v in (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
    with timer.stage("extract"):
        pycolmap.extract_features(
            db,
            image_dir,
            image_names=list(image_names),
            camera_mode=getattr(pycolmap.CameraMode, camera_mode.upper().replace("-", "_")),
            reader_options=reader,
            device=pycolmap.Device.cpu,
        )
    with timer.stage("match"):
        if pairs is None:
            pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
        else:
            listed = pycolmap.ImportedPairingOptions(match_list_path=str(pairs))
            pycolmap.match_image_pairs(db, pairing_options=listed, device=pycolmap.Device.cpu)
    pycolmap.set_random_seed(seed)
    with timer.stage("map"):
        models = pycolmap.incremental_mapping(db, image_dir, out_dir / "models", options)
    best = largest_model(models)
    if best is not None:
        best.write(out_dir)
    return ColmapSiftResult(best, timer.as_dict(), out_dir)
