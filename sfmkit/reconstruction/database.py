"""Writing sfmkit's keypoints and verified matches into a COLMAP database."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycolmap

from sfmkit.io.h5 import H5Reader
from sfmkit.io.pairs import Pair
from sfmkit.reconstruction.cameras import CameraConf, describe_image, group_images, load_known_k, make_camera
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


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
        for name in track(names, "import keypoints"):
            keypoints = features.array((name,), "keypoints").astype(np.float32)
            db.write_keypoints(image_ids[name], keypoints)
    finally:
        db.close()
    return image_ids


def import_matches(db_path: Path, image_ids: dict[str, int], matches: dict[Pair, np.ndarray]) -> int:
    """Write (M, 2) keypoint-index matches per pair; returns the number of pairs written."""
    db = pycolmap.Database.open(str(db_path))
    written = 0
    try:
        for (name0, name1), m in matches.items():
            if len(m) == 0:
                continue
            db.write_matches(image_ids[name0], image_ids[name1], np.ascontiguousarray(m, dtype=np.uint32))
            written += 1
    finally:
        db.close()
    return written
