"""Keypoint patches supervised by structure-from-motion: the training data of the learned
multiscale detector and triplet descriptor (``sfmkit build-patches``).

From a COLMAP model whose keypoints carry scales, every 3D point seen by at least two images
gives one patch per observation, centred on the keypoint, of side ``scale_factor x sigma``
(sigma: the keypoint scale in pixels) discretised to the nearest of :data:`PATCH_SIZES` (in
log scale, clipped at both ends). Patches keep their discretised size (they are not
resampled to one size); patches that would leave the image are dropped. Besides these
*positives* the file holds *jittered* copies (the same keypoint off the patch centre by a
random offset, for the detector's shape term) and *negatives* (random positions at least
``negative_distance x S`` from every reconstructed keypoint of the image).

The file layout is documented in :mod:`sfmkit.io.patches`; split train and test by scene (one
file per model).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch
from scipy.spatial import cKDTree

from sfmkit.errors import ConfigError, ImageReadError, SfmkitError
from sfmkit.io.h5 import H5Reader
from sfmkit.io.images import read_image
from sfmkit.io.patches import KINDS, write_patches
from sfmkit.models.keypoints import PATCH_SIZES, crop_patches
from sfmkit.utils.config import conf_to_dict, conf_to_json
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchConf:
    """Options of ``build-patches``.

    Attributes:
        scale_factor: patch side = scale_factor x keypoint scale (12: the extent of a SIFT
            descriptor, 4 bins of 3 sigma), before discretisation.
        min_track: smallest number of images that see a point.
        max_points: at most this many 3D points (chosen at random; 0 = all).
        max_views: at most this many observations per point.
        jitter_per_positive: jittered copies per positive.
        max_jitter: largest jitter offset per axis, as a fraction of the patch side.
        negatives_per_positive: negatives drawn per positive of the image.
        negative_distance: a negative's centre is at least this fraction of its side from
            every reconstructed keypoint.
        seed: random seed.
    """

    scale_factor: float = 12.0
    min_track: int = 2
    max_points: int = 5000
    max_views: int = 5
    jitter_per_positive: int = 1
    max_jitter: float = 0.25
    negatives_per_positive: float = 1.0
    negative_distance: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale_factor <= 0 or self.min_track < 2 or self.max_views < 2 or self.max_points < 0:
            raise ConfigError(
                "build-patches needs scale_factor > 0, min_track >= 2, max_views >= 2, max_points >= 0"
            )
        if not 0 <= self.max_jitter <= 0.5 or self.negative_distance < 0 or self.negatives_per_positive < 0:
            raise ConfigError("max_jitter must be in [0, 0.5]; negative options must be >= 0")


def discretise_sizes(sides: np.ndarray) -> np.ndarray:
    """Nearest patch size of :data:`PATCH_SIZES` in log scale (clipped at both ends)."""
    sizes = np.asarray(PATCH_SIZES, np.float64)
    logs = np.log(np.clip(np.asarray(sides, np.float64), 1e-6, None))
    return np.asarray(PATCH_SIZES)[np.abs(logs[:, None] - np.log(sizes)[None]).argmin(1)]


def _inside(xy0: np.ndarray, sizes: np.ndarray, width: int, height: int) -> np.ndarray:
    half = (sizes - 1) / 2
    return (
        (xy0[:, 0] - half >= 0)
        & (xy0[:, 1] - half >= 0)
        & (xy0[:, 0] + half <= width - 1)
        & (xy0[:, 1] + half <= height - 1)
    )


# ---------------------------------------------------------------------------------- scales


def scales_from_features(path: Path) -> dict[str, np.ndarray]:
    """Keypoint scales (full-resolution pixels) per image from an sfmkit feature file."""
    with H5Reader(path, "features") as reader:
        out = {}
        for (name,) in reader.items(1):
            scales = reader.optional((name,), "scales")
            if scales is None:
                raise SfmkitError(
                    f"{path} has no keypoint scales for {name}: build-patches needs features with "
                    "scales, e.g. from 'sfmkit reconstruct --features sift'"
                )
            out[name] = scales.astype(np.float32)
    return out


def scales_from_database(path: Path) -> dict[str, np.ndarray]:
    """Keypoint scales per image from a COLMAP database (4 columns: x, y, scale, orientation;
    6 columns: x, y and the affine shape, scale = sqrt|det A|)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            names = dict(db.execute("SELECT image_id, name FROM images"))
            rows = db.execute("SELECT image_id, rows, cols, data FROM keypoints").fetchall()
    except sqlite3.Error as exc:
        raise SfmkitError(f"cannot read the COLMAP database {path}: {exc}") from exc
    out = {}
    for image_id, n, cols, data in rows:
        if n == 0:
            continue
        kp = np.frombuffer(data, np.float32).reshape(n, cols)
        if cols == 4:
            out[names[image_id]] = kp[:, 2].copy()
        elif cols == 6:
            out[names[image_id]] = np.sqrt(np.abs(kp[:, 2] * kp[:, 5] - kp[:, 3] * kp[:, 4]))
        else:
            raise SfmkitError(
                f"{path}: keypoints of {names[image_id]} have no scale (2 columns); pass --features "
                "with a feature file that has scales, or a database made by COLMAP's SIFT"
            )
    return out


def find_scales(model: Path, features: Path | None) -> tuple[dict[str, np.ndarray], str]:
    """Scales from ``features`` (an .h5 feature file or a COLMAP .db) or, when not given,
    from a ``features-*.h5`` with scales or a ``database.db`` beside or above ``model``."""
    if features is not None:
        if not Path(features).is_file():
            raise SfmkitError(f"{features} does not exist")
        if Path(features).suffix == ".db":
            return scales_from_database(Path(features)), str(features)
        return scales_from_features(Path(features)), str(features)
    for folder in (Path(model), Path(model).parent, Path(model).parent.parent):
        for candidate in sorted(folder.glob("features-*.h5")):
            try:
                return scales_from_features(candidate), str(candidate)
            except SfmkitError:
                continue
        if (folder / "database.db").is_file():
            try:
                return scales_from_database(folder / "database.db"), str(folder / "database.db")
            except SfmkitError:
                continue
    raise SfmkitError(
        f"found no keypoint scales for {model}: pass --features FILE (an sfmkit feature file with "
        "scales, e.g. from '--features sift', or COLMAP's database.db)"
    )


# ---------------------------------------------------------------------------------- build


def _observations(rec: pycolmap.Reconstruction, conf: PatchConf, rng: np.random.Generator) -> dict[int, list]:
    """{image_id: [(track id, point2D index), ...]} for the sampled points."""
    points = [pid for pid, p in rec.points3D.items() if p.track.length() >= conf.min_track]
    if conf.max_points and len(points) > conf.max_points:
        points = sorted(rng.choice(points, conf.max_points, replace=False).tolist())
    per_image: dict[int, list] = defaultdict(list)
    for pid in points:
        elements = [(e.image_id, e.point2D_idx) for e in rec.points3D[pid].track.elements]
        if len(elements) > conf.max_views:
            elements = [elements[i] for i in sorted(rng.choice(len(elements), conf.max_views, replace=False))]
        for image_id, idx in elements:
            per_image[image_id].append((pid, idx))
    return per_image


class _Table:
    """Rows of one patch kind, accumulated in memory."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = defaultdict(list)
        self.rows = 0

    def add(self, **cols: np.ndarray) -> None:
        for k, v in cols.items():
            self.columns[k].append(np.asarray(v))
        self.rows += len(next(iter(cols.values())))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.columns.items()}


def build_patches(
    model: Path,
    images: Path,
    output: Path,
    conf: PatchConf = PatchConf(),
    *,
    features: Path | None = None,
) -> dict[str, Any]:
    """Write ``output`` (see the module docs); returns counts."""
    model, images, output = Path(model), Path(images), Path(output)
    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as exc:  # noqa: BLE001 - pycolmap raises RuntimeError/ValueError variants
        raise SfmkitError(f"cannot read the COLMAP model {model}: {exc}") from exc
    if rec.num_points3D() == 0:
        raise SfmkitError(f"the COLMAP model {model} has no 3D points")
    scales, scales_source = find_scales(model, features)
    output.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(conf.seed)
    start = time.perf_counter()
    per_image = _observations(rec, conf, rng)
    image_ids = sorted(per_image, key=lambda i: rec.images[i].name)
    names = [rec.images[i].name for i in image_ids]
    crops: dict[int, list[np.ndarray]] = defaultdict(list)
    counts = dict.fromkeys(PATCH_SIZES, 0)
    tables = {k: _Table() for k in KINDS}
    skipped: dict[str, str] = {}

    def store(size: int, patches: np.ndarray) -> np.ndarray:
        first = counts[size]
        crops[size].append(patches)
        counts[size] += len(patches)
        return np.arange(first, counts[size], dtype=np.int32)

    for k, image_id in enumerate(track(image_ids, "build patches")):
        image = rec.images[image_id]
        try:
            loaded = read_image(images / image.name)
        except ImageReadError as exc:
            logger.warning("skipping %s", exc)
            skipped[image.name] = str(exc)
            continue
        cam = rec.cameras[image.camera_id]
        width, height = loaded.size
        if (cam.width, cam.height) != (width, height):
            raise SfmkitError(
                f"{images / image.name} is {width}x{height} but the model's camera is "
                f"{cam.width}x{cam.height}: pass the images the model was made from"
            )
        if image.name not in scales:
            raise SfmkitError(f"{scales_source} has no keypoint scales for {image.name}")
        gray = torch.from_numpy(loaded.gray())
        obs = np.asarray(per_image[image_id], np.int64)
        xy = np.array([image.points2D[int(i)].xy for i in obs[:, 1]], np.float64)
        sigma = scales[image.name][obs[:, 1]].astype(np.float64)
        sizes = discretise_sizes(conf.scale_factor * sigma)
        keep = _inside(xy - 0.5, sizes, width, height)
        obs, xy, sigma, sizes = obs[keep], xy[keep], sigma[keep], sizes[keep]
        all_kp = np.array([p.xy for p in image.points2D if p.has_point3D()], np.float64).reshape(-1, 2)
        tree = cKDTree(all_kp) if len(all_kp) else None
        for size in PATCH_SIZES:
            sel = np.flatnonzero(sizes == size)
            if len(sel):
                rows = store(size, crop_patches(gray, xy[sel] - 0.5, size))
                pos_rows = tables["positives"].rows + np.arange(len(sel))
                tables["positives"].add(
                    track=obs[sel, 0],
                    image=np.full(len(sel), k, np.int32),
                    size=np.full(len(sel), size, np.int16),
                    index=rows,
                    xy=xy[sel].astype(np.float32),
                    sigma=sigma[sel].astype(np.float32),
                )
                for _ in range(conf.jitter_per_positive):
                    offset = rng.uniform(-conf.max_jitter, conf.max_jitter, (len(sel), 2)) * size
                    centres = xy[sel] - offset  # the keypoint sits at +offset from the centre
                    ok = _inside(centres - 0.5, np.full(len(sel), size), width, height)
                    if ok.any():
                        jrows = store(size, crop_patches(gray, centres[ok] - 0.5, size))
                        tables["jittered"].add(
                            image=np.full(ok.sum(), k, np.int32),
                            size=np.full(ok.sum(), size, np.int16),
                            index=jrows,
                            xy=centres[ok].astype(np.float32),
                            offset=offset[ok].astype(np.float32),
                            source=pos_rows[ok].astype(np.int32),
                        )
            # negatives: as many per size as positives of that size (at least a few of each)
            wanted = int(round(conf.negatives_per_positive * max(len(sel), 2)))
            if wanted == 0 or min(width, height) <= size:
                continue
            cand = (
                np.column_stack(
                    [
                        rng.uniform((size - 1) / 2, width - 1 - (size - 1) / 2, 4 * wanted),
                        rng.uniform((size - 1) / 2, height - 1 - (size - 1) / 2, 4 * wanted),
                    ]
                )
                + 0.5
            )
            if tree is not None:
                dist, _ = tree.query(cand)
                cand = cand[dist >= conf.negative_distance * size]
            cand = cand[:wanted]
            if len(cand):
                nrows = store(size, crop_patches(gray, cand - 0.5, size))
                tables["negatives"].add(
                    image=np.full(len(cand), k, np.int32),
                    size=np.full(len(cand), size, np.int16),
                    index=nrows,
                    xy=cand.astype(np.float32),
                )
    summary = {kind: tables[kind].rows for kind in KINDS}
    arrays = {kind: tables[kind].arrays() if tables[kind].rows else {} for kind in KINDS}
    stats = {
        **summary,
        "tracks": int(len(np.unique(arrays["positives"]["track"]))) if summary["positives"] else 0,
        "per_size": {str(s): int(counts[s]) for s in PATCH_SIZES},
        "images": len(names) - len(skipped),
        "skipped_images": skipped,
    }
    patches = {
        size: np.concatenate(crops[size]) if crops[size] else np.zeros((0, size, size), np.uint8)
        for size in PATCH_SIZES
    }
    write_patches(
        output,
        names,
        patches,
        arrays,
        config=conf_to_json(conf),
        model=str(model.resolve()),
        images_dir=str(images.resolve()),
        scales=scales_source,
        counts=json.dumps(stats),
    )
    stats["seconds"] = round(time.perf_counter() - start, 2)
    stats["config"] = conf_to_dict(conf)
    logger.info(
        "%s: %d positives, %d jittered, %d negatives",
        output,
        summary["positives"],
        summary["jittered"],
        summary["negatives"],
    )
    return stats
