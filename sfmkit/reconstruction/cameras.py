"""Camera models for the images of a reconstruction.

Intrinsics come from, in order of preference: a known calibration (``--intrinsics``), the
EXIF focal length (read by pycolmap, which knows sensor widths), or COLMAP's prior
(focal = 1.2 x the longer side). ``--camera-mode`` decides which images share a camera:
``auto`` (same size and EXIF camera), ``single``, ``per-image`` or ``per-folder``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from sfmkit.errors import ConfigError
from sfmkit.io.images import exif_camera
from sfmkit.io.intrinsics import read_intrinsics

logger = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "single", "per-image", "per-folder")
PRIOR_FOCAL_FACTOR = 1.2


@dataclass(frozen=True)
class CameraConf:
    """Attributes:
    mode: which images share one camera (see module docs).
    model: COLMAP camera model when the calibration is unknown.
    intrinsics: path of a known K (``K.txt``), or None.
    refine_intrinsics: with ``intrinsics``, refine them in bundle adjustment.
    """

    mode: str = "auto"
    model: str = "SIMPLE_RADIAL"
    intrinsics: str | None = None
    refine_intrinsics: bool = False

    def __post_init__(self) -> None:
        if self.mode not in CAMERA_MODES:
            raise ConfigError(f"camera mode {self.mode!r} is not one of {CAMERA_MODES}")
        try:
            pycolmap.Camera.create_from_model_name(0, self.model, 1.0, 16, 16)
        except Exception as exc:  # noqa: BLE001 - pycolmap raises various types here
            raise ConfigError(f"unknown COLMAP camera model {self.model!r} ({exc})") from None


@dataclass(frozen=True)
class ImageCamera:
    """What decides an image's camera: its size and EXIF data."""

    size: tuple[int, int]
    focal: float | None  # EXIF focal length in pixels, None if unknown
    exif_camera: str  # "make model" from EXIF, "" if absent


def _exif_focal(path: Path, size: tuple[int, int]) -> float | None:
    """EXIF focal length in pixels of the (possibly rotated) image of ``size``."""
    try:
        camera = pycolmap.infer_camera_from_image(path)
    except Exception:  # noqa: BLE001 - COLMAP cannot read every format sfmkit reads
        camera = None
    if camera is not None and camera.has_prior_focal_length:
        # pycolmap sees the stored (unrotated) image: rescale by the longer side.
        return float(camera.mean_focal_length()) * max(size) / max(camera.width, camera.height)
    return None


def describe_image(path: Path, size: tuple[int, int]) -> ImageCamera:
    return ImageCamera(size, _exif_focal(path, size), exif_camera(path))


def group_images(names: Sequence[str], info: dict[str, ImageCamera], mode: str) -> list[list[str]]:
    """Images that share a camera, per ``mode``."""
    if mode == "single":
        sizes = {info[n].size for n in names}
        if len(sizes) > 1:
            raise ConfigError(
                f"--camera-mode single needs images of one size, found {sorted(sizes)[:4]}; "
                "use --camera-mode auto or per-image"
            )
        return [list(names)]
    if mode == "per-image":
        return [[n] for n in names]
    groups: dict[object, list[str]] = {}
    for name in names:
        if mode == "per-folder":
            key: object = (str(Path(name).parent), info[name].size)
        else:
            i = info[name]
            key = (i.size, i.exif_camera, None if i.focal is None else round(i.focal, 1))
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def make_camera(conf: CameraConf, image: ImageCamera, known_k: np.ndarray | None) -> pycolmap.Camera:
    """The pycolmap camera of one group, whose representative image is ``image``."""
    width, height = image.size
    if known_k is not None:
        fx, fy, cx, cy = known_k[0, 0], known_k[1, 1], known_k[0, 2], known_k[1, 2]
        camera = pycolmap.Camera(model="PINHOLE", width=width, height=height, params=[fx, fy, cx, cy])
        camera.has_prior_focal_length = True
        return camera
    focal = image.focal if image.focal is not None else PRIOR_FOCAL_FACTOR * max(width, height)
    camera = pycolmap.Camera.create_from_model_name(0, conf.model, focal, width, height)
    camera.has_prior_focal_length = image.focal is not None
    return camera


def load_known_k(conf: CameraConf) -> np.ndarray | None:
    return None if conf.intrinsics is None else read_intrinsics(Path(conf.intrinsics))
