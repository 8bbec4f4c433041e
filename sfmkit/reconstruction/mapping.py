"""The ``map`` stage: verified matches -> a COLMAP model by pycolmap incremental mapping.

Writes into the output folder: ``database.db``, the largest model as COLMAP binary files
(``cameras.bin``, ``images.bin``, ``points3D.bin``, ...), ``model.ply``, every model found
under ``models/<k>/``, ``pairs-verified.txt`` and ``map-run.json`` (the options, a digest of
the inputs and the statistics of the finished model: an identical rerun reuses the model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.colmap_model import clear_model, write_model
from sfmkit.io.h5 import H5Reader, check_writable_dir, read_file_attrs
from sfmkit.io.images import check_fingerprints, read_image, stored_fingerprints
from sfmkit.io.matches import input_features, read_verified
from sfmkit.io.pairs import read_pairs, write_pairs
from sfmkit.reconstruction.cameras import CameraConf, load_known_k
from sfmkit.reconstruction.database import create_database, import_matches
from sfmkit.utils.config import conf_to_dict, same_config
from sfmkit.utils.files import write_text_atomic
from sfmkit.utils.progress import bar, track

logger = logging.getLogger(__name__)


#: the mappers of ``--mapper``
MAPPERS = ("incremental", "global", "hierarchical")


@dataclass(frozen=True)
class MapConf:
    """Attributes:
    camera: camera models and sharing (see :class:`CameraConf`).
    two_view_max_error: RANSAC threshold of pycolmap's two-view geometry, in full-resolution
        pixels. (Scaling COLMAP's pixel thresholds by the extraction downscale was measured on
        Strecha: longer tracks, but no better cameras; so COLMAP's defaults are kept.)
    min_num_matches: pairs with fewer verified matches are ignored by the mapper.
    min_model_size: smallest model the mapper keeps.
    seed: random seed of pycolmap's RANSAC and mapper.
    num_threads: threads of pycolmap's mapper (-1 = all cores). One by default, so that the
        same inputs give the same model: Ceres, which bundle-adjusts, sums in thread order
        when it has several threads, and the resulting last-digit differences change which
        observations are filtered (measured: 20 runs on 5 fountain-P11 images gave two models,
        737 and 750 points, with all cores; 20 identical ones with one thread, at no measured
        cost in time on 2 cores).
    init_min_tri_angles: minimum triangulation angle (degrees) of the initial pair, tried in
        order: COLMAP's 16, then lower ones while the best model registers fewer than
        ``retry_below`` of the images. Unordered photos of a distant landmark often have
        no well-triangulated pair that also connects to the rest; COLMAP relaxes its
        initialisation only when no model forms at all, this also does it when the model
        stays small.
    retry_below: fraction of registered images under which the next angle is tried.
    mapper: ``incremental`` (COLMAP's incremental mapper, with the retries above), ``global``
        (pycolmap's GLOMAP: rotation averaging and global positioning of all images at once, then
        bundle adjustment) or ``hierarchical`` (the images partitioned into overlapping clusters,
        each mapped incrementally, then merged). The last two are for large collections.
    """

    camera: CameraConf = field(default_factory=CameraConf)
    two_view_max_error: float = 4.0
    min_num_matches: int = 15
    min_model_size: int = 3
    seed: int = 0
    num_threads: int = 1
    init_min_tri_angles: tuple[float, ...] = (16.0, 8.0, 4.0)
    retry_below: float = 0.8
    mapper: str = "incremental"

    def __post_init__(self) -> None:
        if self.mapper not in MAPPERS:
            raise ConfigError(f"unknown mapper {self.mapper!r}; choose among {MAPPERS}")


@dataclass(frozen=True)
class MapResult:
    """Attributes:
    path: folder of the largest model.
    reconstruction: the largest model (None when nothing could be reconstructed).
    stats: counts and errors for summaries and reports.
    """

    path: Path
    reconstruction: pycolmap.Reconstruction | None
    stats: dict[str, Any]


def _mapper_options(conf: MapConf) -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.min_num_matches = conf.min_num_matches
    options.min_model_size = conf.min_model_size
    options.extract_colors = False  # colours are sampled by sfmkit (EXIF-rotated images)
    options.num_threads = conf.num_threads
    options.random_seed = conf.seed
    options.mapper.random_seed = conf.seed
    options.triangulation.random_seed = conf.seed
    known = conf.camera.intrinsics is not None
    refine = not known or conf.camera.refine_intrinsics
    options.ba_refine_focal_length = refine
    options.ba_refine_principal_point = known and conf.camera.refine_intrinsics
    options.ba_refine_extra_params = refine
    options.mapper.abs_pose_refine_focal_length = refine
    options.mapper.abs_pose_refine_extra_params = refine
    return options


def reconstruction_stats(rec: pycolmap.Reconstruction | None, num_images: int) -> dict[str, Any]:
    if rec is None:
        return {"images": num_images, "registered": 0, "points3D": 0}
    return {
        "images": num_images,
        "registered": rec.num_reg_images(),
        "points3D": rec.num_points3D(),
        "observations": rec.compute_num_observations(),
        "mean_track_length": round(rec.compute_mean_track_length(), 3),
        "mean_observations_per_image": round(rec.compute_mean_observations_per_reg_image(), 1),
        "mean_reprojection_error_px": round(rec.compute_mean_reprojection_error(), 4),
        "cameras": {
            int(cid): f"{cam.model_name} {cam.params_to_string()}" for cid, cam in rec.cameras.items()
        },
    }


def colorize(rec: pycolmap.Reconstruction, image_dir: Path, max_size: int = 1600) -> None:
    """Set each 3D point's colour to the mean colour of its observations."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for image_id in track(list(rec.reg_image_ids()), "colours"):
        image = rec.images[image_id]
        try:
            loaded = read_image(Path(image_dir) / image.name, max_size)
        except SfmkitError as exc:
            logger.warning("no colours from %s: %s", image.name, exc)
            continue
        h, w = loaded.rgb.shape[:2]
        for p2d in image.points2D:
            if not p2d.has_point3D():
                continue
            x = min(max(int(p2d.xy[0] / loaded.scale[0]), 0), w - 1)
            y = min(max(int(p2d.xy[1] / loaded.scale[1]), 0), h - 1)
            pid = p2d.point3D_id
            sums[pid] = sums.get(pid, 0) + loaded.rgb[y, x].astype(np.float64)
            counts[pid] = counts.get(pid, 0) + 1
    for pid, total in sums.items():
        rec.points3D[pid].color = np.round(total / counts[pid]).astype(np.uint8)


def _size(rec: pycolmap.Reconstruction) -> tuple[int, int]:
    return rec.num_reg_images(), rec.num_points3D()


def largest_model(models: dict[int, pycolmap.Reconstruction]) -> pycolmap.Reconstruction | None:
    """The model with most registered images (then most points)."""
    return max(models.values(), key=_size, default=None)


def _incremental_mapping(
    db_path: Path,
    image_dir: Path,
    models_dir: Path,
    options: pycolmap.IncrementalPipelineOptions,
    seed: int,
    num_images: int,
    angle: float,
) -> dict[int, pycolmap.Reconstruction]:
    """One pycolmap incremental-mapping run with a progress bar driven by its callbacks."""
    if models_dir.exists():
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True)
    pycolmap.set_random_seed(seed)
    with bar(f"map (init angle {angle:g})", total=num_images) as progress:
        return pycolmap.incremental_mapping(
            db_path,
            image_dir,
            models_dir,
            options,
            initial_image_pair_callback=lambda: progress.advance(2),
            next_image_callback=lambda: progress.advance(1),
        )


def _global_or_hierarchical(
    conf: MapConf, db_path: Path, image_dir: Path, models_dir: Path
) -> dict[int, pycolmap.Reconstruction]:
    """One run of pycolmap's global (GLOMAP) or hierarchical mapper."""
    models_dir.mkdir(parents=True)
    pycolmap.set_random_seed(conf.seed)
    inc = _mapper_options(conf)
    if conf.mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.min_num_matches = conf.min_num_matches
        options.min_model_size = conf.min_model_size
        options.num_threads = conf.num_threads
        options.random_seed = conf.seed
        options.mapper.num_threads = conf.num_threads
        options.mapper.random_seed = conf.seed
        ba = options.mapper.bundle_adjustment
        ba.refine_focal_length = inc.ba_refine_focal_length
        ba.refine_principal_point = inc.ba_refine_principal_point
        ba.refine_extra_params = inc.ba_refine_extra_params
        with bar("map (global)", total=None):
            return pycolmap.global_mapping(db_path, image_dir, models_dir, options)
    options = pycolmap.HierarchicalPipelineOptions()
    options.incremental_options = inc
    options.num_threads = conf.num_threads
    with bar("map (hierarchical)", total=None):
        return pycolmap.hierarchical_mapping(db_path, image_dir, models_dir, options)


def _run_mapper(
    conf: MapConf, db_path: Path, image_dir: Path, out_dir: Path, num_images: int
) -> tuple[pycolmap.Reconstruction | None, dict[int, pycolmap.Reconstruction], list[dict[str, Any]]]:
    """Incremental mapping, retried with lower initial triangulation angles while the largest
    model registers fewer than ``conf.retry_below`` of the images (or one global or hierarchical
    run). Returns the largest model, all models of its attempt, and a summary of the attempts."""
    for stale in [out_dir / "models", *out_dir.glob("models-init*")]:
        if stale.is_dir():
            shutil.rmtree(stale)
    if conf.mapper != "incremental":
        found = _global_or_hierarchical(conf, db_path, image_dir, out_dir / "models")
        best = largest_model(found)
        registered = best.num_reg_images() if best else 0
        return best, found, [{"mapper": conf.mapper, "registered": registered}]
    best, models, attempts = None, {}, []
    for attempt, angle in enumerate(conf.init_min_tri_angles):
        options = _mapper_options(conf)
        options.mapper.init_min_tri_angle = angle
        attempt_dir = out_dir / ("models" if attempt == 0 else f"models-init{angle:g}")
        found = _incremental_mapping(db_path, image_dir, attempt_dir, options, conf.seed, num_images, angle)
        candidate = largest_model(found)
        attempts.append(
            {"init_min_tri_angle": angle, "registered": candidate.num_reg_images() if candidate else 0}
        )
        if candidate is not None and (best is None or _size(candidate) > _size(best)):
            best, models = candidate, found
        if best is not None and best.num_reg_images() >= conf.retry_below * num_images:
            break
        if attempt + 1 < len(conf.init_min_tri_angles):
            logger.info(
                "the largest model registers %d of %d images; retrying with a smaller initial "
                "triangulation angle than %g degrees",
                0 if best is None else best.num_reg_images(),
                num_images,
                angle,
            )
    return best, models, attempts


#: The map stage's record of a finished model: its config, a digest of its inputs and its
#: statistics. An identical rerun reuses the model; a rerun with other options is refused.
RUN_FILE = "map-run.json"


def _inputs_digest(
    feats: H5Reader,
    names: list[str],
    matches: dict[tuple[str, str], np.ndarray],
    fingerprints: dict,
    known_k: np.ndarray | None,
) -> str:
    """SHA-1 of everything the mapper reads: keypoints, image fingerprints, verified matches
    and the known calibration (the contents of K.txt, not only its path)."""
    digest = hashlib.sha1()
    if known_k is not None:
        digest.update(np.ascontiguousarray(known_k, np.float64).tobytes())
    for name in names:
        digest.update(name.encode() + b"\0" + str(fingerprints.get(name)).encode())
        digest.update(np.ascontiguousarray(feats.array((name,), "keypoints"), np.float64).tobytes())
    for (a, b), m in sorted(matches.items()):
        digest.update(f"{a}\0{b}\0".encode() + np.ascontiguousarray(m, np.int64).tobytes())
    return digest.hexdigest()


def _previous_run(out_dir: Path, config: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The record of the model in ``out_dir``; refused when made with other options."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    recorded = previous.get("config", {})
    recorded.setdefault("mapper", "incremental")  # models made before --mapper existed
    same = same_config(f"{out_dir} holds a model", recorded, config, overwrite=overwrite)
    return previous if same else None


def map_images(
    conf: MapConf,
    image_dir: Path,
    verified: Path,
    pairs: Path,
    out_dir: Path,
    *,
    features: Path | None = None,
    overwrite: bool = False,
) -> MapResult:
    """Reconstruct the images of ``pairs`` from their verified matches.

    A model already in ``out_dir`` made from the same inputs with the same options is reused;
    one made with other options is refused unless ``overwrite``; with the same options and
    other inputs (new images, other pairs) it is recomputed.
    """
    out_dir = Path(out_dir)
    known_k = load_known_k(conf.camera)  # a bad --intrinsics fails before anything is touched
    check_writable_dir(out_dir)
    config = conf_to_dict(conf)
    previous = _previous_run(out_dir, config, overwrite)
    features = input_features(verified, features)
    db_path = out_dir / "database.db"
    with H5Reader(features, "features") as feats, H5Reader(verified, "verified") as ver:
        feature_names = {k[0] for k in feats.items(1)}
        pair_list = read_pairs(pairs, feature_names)
        names = sorted({n for p in pair_list for n in p})
        missing = [n for n in names if not (Path(image_dir) / n).is_file()]
        if missing:
            raise SfmkitError(
                f"{len(missing)} image(s) of the feature file are not in {image_dir} (first: {missing[0]}); "
                "pass the image folder the features were extracted from"
            )
        fingerprints = stored_fingerprints(features, names)
        check_fingerprints(fingerprints, image_dir, features, read_file_attrs(features).get("image_dir"))
        matches = {}
        for pair in pair_list:
            m = read_verified(ver, pair)
            if m is not None and len(m) >= conf.min_num_matches:
                matches[pair] = m
        if not matches:
            raise SfmkitError(
                "no image pair has enough verified matches to start a reconstruction; check that the "
                "images overlap, or try more pairs (--pairs exhaustive) or a larger --max-size"
            )
        digest = _inputs_digest(feats, names, matches, fingerprints, known_k)
        reused = None if overwrite else _reuse(out_dir, previous, digest)
        if reused is not None:
            return reused
        (out_dir / RUN_FILE).unlink(missing_ok=True)  # the old record no longer describes sfm/
        image_ids = create_database(db_path, image_dir, names, feats, conf.camera)
    write_pairs(out_dir / "pairs-verified.txt", matches.keys())
    two_view = pycolmap.TwoViewGeometryOptions()
    two_view.ransac.max_error = conf.two_view_max_error
    two_view.ransac.random_seed = conf.seed
    configurations = import_matches(db_path, image_ids, matches, two_view)

    best, models, attempts = _run_mapper(conf, db_path, image_dir, out_dir, len(names))
    clear_model(out_dir)  # a run that reconstructs nothing leaves no old model behind
    if best is not None:
        colorize(best, image_dir)
        write_model(best, out_dir)
    stats = reconstruction_stats(best, len(names))
    stats["models"] = len(models)
    stats["mapping_attempts"] = attempts
    stats["pairs_imported"] = len(matches)
    stats["two_view_configurations"] = configurations
    if best is not None:
        registered = {img.name for img in best.images.values() if img.has_pose}
        stats["unregistered"] = sorted(set(names) - registered)
    record = {"config": config, "inputs_sha1": digest, "stats": stats}
    write_text_atomic(out_dir / RUN_FILE, json.dumps(record, indent=2, default=str) + "\n")
    return MapResult(out_dir, best, stats)


def _reuse(out_dir: Path, previous: dict[str, Any] | None, digest: str) -> MapResult | None:
    """The finished model of ``out_dir`` when it was made from inputs of digest ``digest``."""
    if previous is None or previous.get("inputs_sha1") != digest:
        return None
    stats = previous.get("stats", {})
    if not stats.get("registered"):
        return MapResult(out_dir, None, stats)
    if not all((out_dir / f).is_file() for f in ("cameras.bin", "images.bin", "points3D.bin")):
        return None
    logger.info("%s: same inputs and options as the model already there; reusing it", out_dir)
    return MapResult(out_dir, pycolmap.Reconstruction(out_dir), stats)
