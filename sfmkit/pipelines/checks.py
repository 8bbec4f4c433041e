"""Checks run before the first stage: every option and input that can be checked cheaply is
checked here, so a bad value fails in a second instead of after extraction, and a failed run
deletes nothing already computed.

Also the output-folder contract of whole runs: a folder holding a finished ``reconstruct`` is
reused only with the options it was made with (:func:`check_same_options`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfmkit.errors import SfmkitError
from sfmkit.io.h5 import check_writable_dir
from sfmkit.io.images import ImageListing, list_images
from sfmkit.io.pairs import PairsSpec, parse_pairs_spec, read_pairs
from sfmkit.reconstruction.cameras import CameraConf, load_known_k
from sfmkit.utils.config import same_config
from sfmkit.utils.device import resolve_device

logger = logging.getLogger(__name__)


def check_images(images: Path, image_names: Sequence[str] | None) -> ImageListing:
    """The images of a run; at least two are needed to reconstruct anything."""
    images = Path(images)
    if not images.is_dir():
        raise SfmkitError(
            f"image folder {images} does not exist (or is not a folder); pass the folder of the photos"
        )
    listing = list_images(images, image_names)
    if len(listing.names) < 2:
        raise SfmkitError(
            f"need at least 2 images to reconstruct, found {len(listing.names)} in {images} "
            f"({', '.join(listing.names)}); add overlapping photos of the same scene"
        )
    return listing


def check_pairs(spec: str, names: Sequence[str], *, retrieval: bool = False) -> PairsSpec:
    """Parse ``--pairs``; a pairs file must name at least one pair of ``names``."""
    parsed = parse_pairs_spec(spec, retrieval=retrieval)
    if parsed.kind == "file" and parsed.path is not None:
        read_pairs(parsed.path, names)
    return parsed


def check_camera(conf: CameraConf) -> None:
    """Read ``--intrinsics`` now (a missing or malformed K.txt fails before any work)."""
    load_known_k(conf)


def check_device(device: str) -> None:
    """``--device`` names a device this machine has."""
    resolve_device(device)


def check_output(out_dir: Path) -> None:
    """The output folder can be created and written to."""
    check_writable_dir(Path(out_dir))


def check_same_options(out_dir: Path, command: str, config: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse to reuse ``out_dir`` when its ``report.json`` records a finished ``command``
    made with other options (unless ``overwrite``): the README's output-folder contract."""
    path = Path(out_dir) / "report.json"
    if overwrite or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text()).get(command, {}).get("config")
    except (OSError, json.JSONDecodeError, AttributeError):
        logger.warning("%s is unreadable; not checking the options of the previous run", path)
        return
    if previous is not None:
        same_config(f"{out_dir} holds a {command} run", previous, config, overwrite=overwrite)
