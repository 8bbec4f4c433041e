"""Writing sfmkit's keypoints and verified matches into a COLMAP database."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pycolmap

from sfmkit.io.h5 import H5Reader
from sfmkit.io.pairs import Pair
from sfmkit.reconstruction.cameras import CameraConf, describe_image, group_images, load_known_k, make_camera
from sfmkit.utils.parallel import ordered_map
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: images or pairs written per database transaction (one commit each, instead of one per row)
TRANSACTION = 1000


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def create_database(
    db_path: Path,
    image_dir: Path,
    names: Sequence[str],
    features: H5Reader,
    camera_conf: CameraConf,
) -> dict[str, int]:
    """A fresh database with one camera per group, trivial rigs and frames, and keypoints.

    Returns:
        image name -> image id.
    """
    db_path = Path(db_path)
    if db_path.exists():
        db_path.unlink()
    sizes = {n: tuple(int(v) for v in features.array((n,), "image_size")) for n in names}
    info = {n: describe_image(Path(image_dir) / n, sizes[n]) for n in names}  # type: ignore[arg-type]
    known_k = load_known_k(camera_conf)
    image_ids: dict[str, int] = {}
    db = pycolmap.Database.open(str(db_path))
    try:
        with pycolmap.DatabaseTransaction(db):  # cameras, rigs, images and frames: one commit
            for group in group_images(names, info, camera_conf.mode):
                camera = make_camera(camera_conf, info[group[0]], known_k)
                camera_id = db.write_camera(camera)
                camera.camera_id = camera_id
                rig = pycolmap.Rig()
                rig.add_ref_sensor(camera.sensor_id)
                rig_id = db.write_rig(rig)
                for name in group:
                    image = pycolmap.Image(name=name, camera_id=camera_id)
                    image.image_id = db.write_image(image)
                    frame = pycolmap.Frame()
                    frame.rig_id = rig_id
                    frame.add_data_id(image.data_id)
                    db.write_frame(frame)
                    image_ids[name] = image.image_id
        read = ((n, features.array((n,), "keypoints").astype(np.float32)) for n in names)
        for batch in _batches(track(read, "import keypoints", total=len(names)), TRANSACTION):
            with pycolmap.DatabaseTransaction(db):
                for name, keypoints in batch:
                    db.write_keypoints(image_ids[name], keypoints)
    finally:
        db.close()
    return image_ids


def import_matches(
    db_path: Path,
    image_ids: dict[str, int],
    matches: dict[Pair, np.ndarray],
    options: pycolmap.TwoViewGeometryOptions,
    workers: int | None = None,
) -> dict[str, int]:
    """Write (M, 2) keypoint-index matches per pair and their two-view geometry.

    The geometry is estimated by pycolmap (``estimate_two_view_geometry``: E, F or H with
    RANSAC, COLMAP's configuration logic) pair by pair here rather than through a pairs
    file, so image names may contain spaces.

    Returns:
        counts of pairs per two-view configuration name.
    """
    db = pycolmap.Database.open(str(db_path))
    counts: dict[str, int] = {}
    try:
        cameras = {name: db.read_camera(db.read_image(iid).camera_id) for name, iid in image_ids.items()}
        keypoints = {
            name: db.read_keypoints(iid)[:, :2].astype(np.float64) for name, iid in image_ids.items()
        }

        def estimate(item: tuple[Pair, np.ndarray]) -> tuple[Pair, np.ndarray, pycolmap.TwoViewGeometry]:
            (a, b), m = item
            m = np.ascontiguousarray(m, dtype=np.uint32)
            geometry = pycolmap.estimate_two_view_geometry(
                cameras[a], keypoints[a], cameras[b], keypoints[b], m, options
            )
            return (a, b), m, geometry

        jobs = [(pair, m) for pair, m in matches.items() if len(m)]
        results = track(ordered_map(estimate, jobs, workers), "two-view geometry", total=len(jobs))
        for batch in _batches(results, TRANSACTION):
            with pycolmap.DatabaseTransaction(db):
                for (a, b), m, geometry in batch:
                    db.write_matches(image_ids[a], image_ids[b], m)
                    db.write_two_view_geometry(image_ids[a], image_ids[b], geometry)
                    key = pycolmap.TwoViewGeometryConfiguration(geometry.config).name
                    counts[key] = counts.get(key, 0) + 1
    finally:
        db.close()
    return counts
