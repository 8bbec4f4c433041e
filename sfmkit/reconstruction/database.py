"""Writing sfmkit's keypoints and verified matches into a COLMAP database."""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pycolmap

from sfmkit.errors import SfmkitError
from sfmkit.io.h5 import H5Reader
from sfmkit.io.pairs import Pair
from sfmkit.reconstruction.cameras import CameraConf, describe_image, group_images, load_known_k, make_camera
from sfmkit.utils import progress
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
                image_ids.update(
                    write_camera_images(db, make_camera(camera_conf, info[group[0]], known_k), group)
                )
        read = ((n, features.array((n,), "keypoints").astype(np.float32)) for n in names)
        for batch in _batches(track(read, "import keypoints", total=len(names)), TRANSACTION):
            with pycolmap.DatabaseTransaction(db):
                for name, keypoints in batch:
                    db.write_keypoints(image_ids[name], keypoints)
    finally:
        db.close()
    return image_ids


def write_camera_images(
    db: pycolmap.Database, camera: pycolmap.Camera, names: Sequence[str]
) -> dict[str, int]:
    """Write ``camera`` with a trivial rig, and one image and frame per name; image ids by name."""
    camera.camera_id = db.write_camera(camera)
    rig = pycolmap.Rig()
    rig.add_ref_sensor(camera.sensor_id)
    rig_id = db.write_rig(rig)
    ids = {}
    for name in names:
        image = pycolmap.Image(name=name, camera_id=camera.camera_id)
        image.image_id = db.write_image(image)
        frame = pycolmap.Frame()
        frame.rig_id = rig_id
        frame.add_data_id(image.data_id)
        db.write_frame(frame)
        ids[name] = image.image_id
    return ids


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

    The estimation runs in a child process (a fresh interpreter). pycolmap 4.2's shared-focal
    relative-pose solver (poselib's ``relpose_6pt_shared_focal``, used for two images of one
    camera without a focal-length prior, e.g. images without EXIF) can kill the process on a
    degenerate sample (reproduced with collinear keypoints; ``tests/data/shared_focal_crash.npz``).
    When the child dies, the pairs it had committed are kept and a new child goes on with the
    rest. A pair that crashed a child alone is estimated again with its two images' cameras kept
    apart (COLMAP's fundamental-matrix path, which has no such solver); if several pairs were in
    flight, the rest goes on one pair at a time until the crash names its pair, so healthy pairs
    keep pycolmap's usual estimate whatever the threading.

    Returns:
        counts of pairs per two-view configuration name.
    """
    todo = [(pair, np.ascontiguousarray(m, dtype=np.uint32)) for pair, m in matches.items() if len(m)]
    apart: set[Pair] = set()
    threads = workers
    # a fresh interpreter (not multiprocessing): it does not re-import the caller's __main__;
    # it imports this sfmkit, wherever the caller found it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_SOURCE, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="sfmkit-two-view-", dir=Path(db_path).parent) as tmp:
        journal, job = Path(tmp) / "journal", Path(tmp) / "job.pickle"
        while todo:
            journal.write_bytes(b"")
            with job.open("wb") as f:
                glog = pycolmap.logging.minloglevel
                pickle.dump(
                    (db_path, image_ids, todo, options, threads, journal, apart, progress.enabled(), glog), f
                )
            returncode = subprocess.call([sys.executable, "-c", _CHILD, str(job)], env=env)
            if returncode == 0:
                break
            suspects = {todo[i][0] for i in _unfinished(journal)} - apart
            if returncode not in _CRASHES or not suspects:
                raise SfmkitError(
                    f"the two-view geometry estimation (pycolmap) stopped with exit code {returncode} "
                    f"while writing {db_path}"
                )
            if len(suspects) == 1:
                logger.warning(
                    "pycolmap crashed estimating the two-view geometry of %s / %s; estimating it again "
                    "with the fundamental matrix (the shared-focal solver left out)",
                    *next(iter(suspects)),
                )
                apart |= suspects
            else:
                # several pairs were in flight: go on one pair at a time, so that the next crash
                # names its pair alone (the healthy pairs keep pycolmap's usual estimate)
                logger.warning("pycolmap crashed estimating a two-view geometry; going on one pair at a time")
                threads = 1
            stored = _stored_configurations(db_path)
            todo = [(pair, m) for pair, m in todo if _pair_id(image_ids, pair) not in stored]
    stored = _stored_configurations(db_path)
    counts: dict[str, int] = {}
    for pair, m in matches.items():
        if len(m):
            key = pycolmap.TwoViewGeometryConfiguration(stored[_pair_id(image_ids, pair)]).name
            counts[key] = counts.get(key, 0) + 1
    return counts


#: exit codes of a child killed by a crash (negative: the signal's number)
_CRASHES = {
    -getattr(signal, name)
    for name in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE", "SIGILL")
    if hasattr(signal, name)
}

#: the folder this sfmkit is imported from (for the child process's import path)
_SOURCE = str(Path(__file__).resolve().parents[2])

_CHILD = "import sys; from sfmkit.reconstruction import database; database.estimate_pairs_job(sys.argv[1])"


def estimate_pairs_job(job: str) -> None:
    """The child process of :func:`import_matches`: run :func:`_estimate_pairs` on the arguments
    pickled in the file ``job``."""
    with open(job, "rb") as f:
        *args, bars, glog = pickle.load(f)
    progress.set_enabled(bars)
    pycolmap.logging.minloglevel = glog
    _estimate_pairs(*args)


def _estimate_pairs(
    db_path: Path,
    image_ids: dict[str, int],
    todo: list[tuple[Pair, np.ndarray]],
    options: pycolmap.TwoViewGeometryOptions,
    workers: int | None,
    journal: Path,
    apart: set[Pair],
) -> None:
    """Estimate and write ``todo``, noting in ``journal`` (one unbuffered line each) which pair
    it starts (``S i``) and ends (``E i``)."""
    db = pycolmap.Database.open(str(db_path))
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
    try:
        cameras = {name: db.read_camera(db.read_image(iid).camera_id) for name, iid in image_ids.items()}
        keypoints = {
            name: db.read_keypoints(iid)[:, :2].astype(np.float64) for name, iid in image_ids.items()
        }

        def estimate(item: tuple[int, tuple[Pair, np.ndarray]]) -> tuple[Pair, np.ndarray, Any]:
            i, ((a, b), m) = item
            os.write(fd, f"S {i}\n".encode())
            camera_b = _kept_apart(cameras[b]) if (a, b) in apart else cameras[b]
            geometry = pycolmap.estimate_two_view_geometry(
                cameras[a], keypoints[a], camera_b, keypoints[b], m, options
            )
            os.write(fd, f"E {i}\n".encode())
            return (a, b), m, geometry

        results = track(ordered_map(estimate, enumerate(todo), workers), "two-view geometry", total=len(todo))
        for batch in _batches(results, TRANSACTION):
            with pycolmap.DatabaseTransaction(db):
                for (a, b), m, geometry in batch:
                    db.write_matches(image_ids[a], image_ids[b], m)
                    db.write_two_view_geometry(image_ids[a], image_ids[b], geometry)
    finally:
        os.close(fd)
        db.close()


def _kept_apart(camera: pycolmap.Camera) -> pycolmap.Camera:
    """A copy of ``camera`` under another id, so that pycolmap treats a pair of its images as
    two cameras (no shared-focal estimation)."""
    copy = pycolmap.Camera(camera.todict())
    copy.camera_id = camera.camera_id + (1 << 30)
    return copy


def _unfinished(journal: Path) -> set[int]:
    """Indices the journal shows started and not ended."""
    started, ended = set(), set()
    for line in journal.read_text().splitlines():
        kind, _, index = line.partition(" ")
        if index.isdigit():
            (started if kind == "S" else ended).add(int(index))
    return started - ended


def _pair_id(image_ids: dict[str, int], pair: Pair) -> int:
    return pycolmap.image_pair_to_pair_id(image_ids[pair[0]], image_ids[pair[1]])


def _stored_configurations(db_path: Path) -> dict[int, int]:
    """Pair id -> two-view configuration of every pair whose geometry the database holds
    (committed), read without the inlier arrays."""
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        return dict(connection.execute("SELECT pair_id, config FROM two_view_geometries"))
