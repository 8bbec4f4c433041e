"""Depth maps of rendered scenes (``depth.h5``, written by ``sfmkit synth --depth``).

Layout: one dataset per image, ``/<encoded image name>`` (H, W) float32, the camera-frame z of
each pixel centre (metres); ``inf`` where the pixel sees no surface (sky).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.io.h5 import encode_name
from sfmkit.utils.files import atomic_path


def write_depths(path: Path, depths: Iterable[tuple[str, np.ndarray]]) -> Path:
    """Write (image name, depth map) pairs atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, depth in depths:
            f.create_dataset(
                encode_name(name), data=np.asarray(depth, np.float32), compression="gzip", shuffle=True
            )
    return Path(path)


def read_depth(path: Path, name: str) -> np.ndarray:
    """The depth map of image ``name``."""
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"{path} does not exist: render the scene with 'sfmkit synth --depth'")
    try:
        with h5py.File(path, "r") as f:
            key = encode_name(name)
            if key not in f:
                raise SfmkitError(f"{path} holds no depth map of {name}: render the scene again with --depth")
            return np.asarray(f[key][()], np.float32)
    except OSError as exc:
        raise SfmkitError(f"cannot read depth maps {path}: {exc}") from exc
