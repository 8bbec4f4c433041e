"""``make-night``: Aachen-style day/night subsets from a dataset with ground-truth cameras.

For every image of a Strecha-layout dataset, one subset in which that image is a night query
(see :mod:`sfmkit.synth.night`) and all others stay day images. Output layout::

    OUT/_images/day/<name>           every image, resized to --max-size (JPEG q95, its EXIF
                                     camera and focal-length tags kept)
    OUT/_images/night/<name>         its night version (JPEG at the strength's quality)
    OUT/<stem>/images/<name>         -> ../../_images/day/<name> for the other images
    OUT/<stem>/images/night_<name>   -> ../../_images/night/<name>
    OUT/<stem>/night.txt             the night query names
    OUT/<stem>/poses.txt             reference poses: name qw qx qy qz tx ty tz (cam_from_world)
    OUT/<stem>/K.txt                 the intrinsics at the written size, when every image
                                     has the same (a rendered orbit's views do not)
    OUT/make_night.json              source, seed, strength and every effect's value

With ``night_images`` (e.g. the ``images_night/`` of ``sfmkit synth --lighting both``) the
night queries are those relit renders instead of the 2D simulation: the light direction and
the light sources change, which no image filter imitates.

Subset images are symbolic links (copies where links are not possible), so all subsets share
the day images and sfmkit's evaluation extracts each image once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from sfmkit.errors import SfmkitError
from sfmkit.io.images import list_images, read_image, upright_exif
from sfmkit.io.intrinsics import write_intrinsics
from sfmkit.io.poses import write_pose_file
from sfmkit.io.strecha import read_scene
from sfmkit.synth.night import nightify, params_dict
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

NIGHT_PREFIX = "night_"
PROXY_NOTE = (
    "A proxy for the Aachen Day-Night protocol made by sfmkit make-night: night images are "
    "simulated with 2D image processing. This is not Aachen Day-Night."
)
RELIT_NOTE = (
    "A proxy for the Aachen Day-Night protocol made by sfmkit make-night: night images are "
    "renders of the same cameras under night lighting. This is not Aachen Day-Night."
)


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
    except OSError:
        shutil.copy2(target, link)


def _shared_intrinsics(
    ks: dict[str, np.ndarray], scales: dict[str, tuple[float, float]]
) -> np.ndarray | None:
    """The one K of every written image (at its written size), or None when they differ."""
    scaled = []
    for name, k in ks.items():
        k = np.array(k, np.float64)
        k[0] /= scales[name][0]
        k[1] /= scales[name][1]
        scaled.append(k)
    first = scaled[0]
    return first if all(np.allclose(k, first, rtol=1e-6, atol=1e-6) for k in scaled) else None


def make_night(
    dataset: Path,
    out_dir: Path,
    *,
    seed: int = 0,
    strength: float = 1.0,
    max_size: int | None = 1024,
    night_images: Path | None = None,
) -> list[Path]:
    """Write one subset per image of ``dataset``; returns the subset folders.

    ``night_images``: a folder holding a night photo of every image under the same name (same
    camera, other lighting); used as the queries instead of the simulation at ``strength``.
    """
    dataset, out_dir = Path(dataset), Path(out_dir)
    cameras = read_scene(dataset)
    names = [n for n in list_images(dataset / "images").names if n in cameras]
    if len(names) < 4:
        raise SfmkitError(f"{dataset} has {len(names)} images with ground-truth cameras; need at least 4")
    if night_images is not None:
        missing = [n for n in names if not (Path(night_images) / n).is_file()]
        if missing:
            raise SfmkitError(
                f"{night_images} lacks the night version of {len(missing)} image(s), e.g. {missing[0]}; "
                "it must hold one image per day image, under the same name"
            )
    pool = out_dir / "_images"
    for kind in ("day", "night"):
        (pool / kind).mkdir(parents=True, exist_ok=True)
    sizes: dict[str, tuple[float, float]] = {}
    label = f"strength {strength:g}" if night_images is None else f"relit, from {night_images}"
    for name in track(names, f"night images ({label})"):
        loaded = read_image(dataset / "images" / name, max_size)
        sizes[name] = loaded.scale
        day, night = pool / "day" / name, pool / "night" / name
        day.parent.mkdir(parents=True, exist_ok=True)
        night.parent.mkdir(parents=True, exist_ok=True)
        exif = upright_exif(dataset / "images" / name)  # the camera (focal length) stays known
        Image.fromarray(loaded.rgb).save(day.with_suffix(".jpg"), quality=95, exif=exif)
        if night_images is not None:
            relit = read_image(Path(night_images) / name, max_size)
            if relit.rgb.shape != loaded.rgb.shape:
                raise SfmkitError(
                    f"{Path(night_images) / name} is {relit.rgb.shape[1]}x{relit.rgb.shape[0]} but its "
                    f"day image is {loaded.rgb.shape[1]}x{loaded.rgb.shape[0]}; night and day images "
                    "must share the camera"
                )
            Image.fromarray(relit.rgb).save(
                night.with_suffix(".jpg"), quality=95, exif=upright_exif(Path(night_images) / name)
            )
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        quality = params_dict(strength)["jpeg_quality"]
        Image.fromarray(nightify(loaded.rgb, strength, rng)).save(
            night.with_suffix(".jpg"), quality=quality, exif=exif
        )
    shared_k = _shared_intrinsics({n: cameras[n].K for n in names}, sizes)
    if shared_k is None:
        logger.info("the images have different intrinsics: no K.txt (one K per subset) is written")
    subsets = []
    for query in names:
        subset = out_dir / Path(query).stem
        if (subset / "images").exists():
            shutil.rmtree(subset / "images")
        poses = {}
        for name in names:
            jpg = Path(name).with_suffix(".jpg").as_posix()
            local = f"{NIGHT_PREFIX}{jpg}" if name == query else jpg
            _link(pool / ("night" if name == query else "day") / jpg, subset / "images" / local)
            poses[local] = cameras[name].pose
        (subset / "night.txt").write_text(f"{NIGHT_PREFIX}{Path(query).with_suffix('.jpg').as_posix()}\n")
        write_pose_file(subset / "poses.txt", poses)
        if shared_k is not None:
            write_intrinsics(subset / "K.txt", shared_k)
        elif (subset / "K.txt").exists():
            (subset / "K.txt").unlink()
        subsets.append(subset)
    info = {
        "note": PROXY_NOTE if night_images is None else RELIT_NOTE,
        "source": str(dataset.resolve()),
        "seed": seed,
        "max_size": max_size,
        "night": params_dict(strength) if night_images is None else {"relit": str(night_images)},
        "subsets": [s.name for s in subsets],
    }
    (out_dir / "make_night.json").write_text(json.dumps(info, indent=2) + "\n")
    return subsets
