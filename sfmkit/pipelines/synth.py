"""``sfmkit synth``: a rendered scene with exact ground truth, as a dataset folder.

Layout (Strecha-compatible, so ``sfmkit evaluate strecha`` scores reconstructions of it)::

    OUT/images/<NNNN>.jpg            day renders (night ones with --lighting night)
    OUT/images_night/<NNNN>.jpg      night renders of the same cameras (--lighting both)
    OUT/images/K.txt                 the intrinsics, when every camera shares them
    OUT/gt_dense_cameras/<name>.camera
    OUT/model/                       COLMAP model: exact PINHOLE cameras, poses, and tracks of
                                     surface points seen (unoccluded) by two or more images
    OUT/mesh.ply                     the scene's triangles (world coordinates)
    OUT/depth.h5                     with --depth: /<name> (H, W) float32 camera-frame z, inf = sky
    OUT/synth.json                   the configuration and counts

Images are JPEG (quality 95) with the EXIF a camera would write (make, model, 35 mm
equivalent focal length), so ``sfmkit reconstruct`` groups zoomed images into their own
cameras and starts from the right focal lengths; ``--format png`` writes lossless PNG instead.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sfmkit.errors import SfmkitError
from sfmkit.io.depth import write_depths
from sfmkit.io.intrinsics import write_intrinsics
from sfmkit.io.strecha import StrechaCamera, write_camera
from sfmkit.synth.gl import Renderer
from sfmkit.synth.meshes import TextureSource, combined_mesh
from sfmkit.synth.scenes import SCENES, build
from sfmkit.synth.truth import sample_surface, truth_model, visible, write_model
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

LIGHTING_CHOICES = ("day", "night", "both")
FORMATS = ("jpg", "png")
_EXIF_MAKE, _EXIF_MODEL, _EXIF_F35 = 0x010F, 0x0110, 0xA405


@dataclass(frozen=True)
class SynthConf:
    """Attributes:
    scene: one of ``orbit``, ``facade``, ``aerial``.
    n_images, size (W, H), seed: the camera layout and everything random.
    lighting: ``day``, ``night`` or ``both`` (two renders per camera).
    detail: tessellation density factor (1 = default triangle size).
    textures: a folder of photos to texture the scene with (None: procedural noise).
    depth: also write depth maps.
    points: surface points sampled for the ground-truth tracks.
    image_format: ``jpg`` (with EXIF) or ``png``.
    """

    scene: str = "orbit"
    n_images: int = 10
    size: tuple[int, int] = (640, 480)
    seed: int = 0
    lighting: str = "day"
    detail: float = 1.0
    textures: str | None = None
    depth: bool = False
    points: int = 20000
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise SfmkitError(f"unknown scene {self.scene!r}; choose among {', '.join(SCENES)}")
        if self.lighting not in LIGHTING_CHOICES:
            raise SfmkitError(f"unknown lighting {self.lighting!r}; choose among {LIGHTING_CHOICES}")
        if self.image_format not in FORMATS:
            raise SfmkitError(f"unknown image format {self.image_format!r}; choose among {FORMATS}")
        if self.n_images < 2 or min(self.size) < 32:
            raise SfmkitError("synth needs at least 2 images of at least 32 x 32 pixels")


@dataclass(frozen=True)
class SynthResult:
    names: list[str]
    counts: dict[str, int]
    timings: dict[str, float]


def _save(image: np.ndarray, path: Path, fmt: str, focal_px: float) -> None:
    im = Image.fromarray(image)
    if fmt == "png":
        im.save(path)
        return
    exif = Image.Exif()
    exif[_EXIF_MAKE] = "sfmkit"
    exif[_EXIF_MODEL] = "synth"
    # 35 mm equivalent focal length; COLMAP maps the image diagonal to the 43.27 mm of 36 x 24 film.
    diagonal = float(np.hypot(*image.shape[:2]))
    exif.get_ifd(0x8769)[_EXIF_F35] = int(round(focal_px / diagonal * np.hypot(36.0, 24.0)))
    im.save(path, quality=95, exif=exif)


def _prepare(out: Path) -> None:
    try:
        for sub in ("images", "gt_dense_cameras"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        probe = out / ".sfmkit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SfmkitError(f"cannot write to output folder {out}: {exc.strerror}; choose another -o") from exc


def synthesize(conf: SynthConf, out: Path) -> SynthResult:
    """Build, render and export the scene of ``conf`` into ``out``."""
    out = Path(out)
    _prepare(out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    rng = np.random.default_rng([conf.seed, 7])
    textures = TextureSource(rng, Path(conf.textures) if conf.textures else None)
    scene, cameras = build(conf.scene, conf.n_images, conf.size, conf.seed, textures, conf.detail)
    timings["build"] = time.perf_counter() - start
    ext = conf.image_format
    names = [f"{i:04d}.{ext}" for i in range(len(cameras))]
    lightings = ["day", "night"] if conf.lighting == "both" else [conf.lighting]
    folders = {
        "day": out / "images",
        "night": out / ("images_night" if conf.lighting == "both" else "images"),
    }
    depths: list[np.ndarray] = []
    t = time.perf_counter()
    for lighting in lightings:
        folders[lighting].mkdir(parents=True, exist_ok=True)
        with Renderer(scene, conf.size[0], conf.size[1], lighting) as renderer:
            for name, cam in zip(names, track(cameras, f"render {lighting}"), strict=True):
                image, depth = renderer.render(cam)
                _save(image, folders[lighting] / name, ext, cam.K[0, 0])
                if lighting == lightings[0]:
                    depths.append(depth)
    timings["render"] = time.perf_counter() - t

    t = time.perf_counter()
    for name, cam in zip(names, cameras, strict=True):
        truth = StrechaCamera(K=cam.K, R_c2w=cam.R.T, C=cam.center, size=(cam.width, cam.height))
        write_camera(out / "gt_dense_cameras" / f"{name}.camera", truth)
    if all(np.allclose(c.K, cameras[0].K) for c in cameras):
        write_intrinsics(out / "images" / "K.txt", cameras[0].K)
    else:
        (out / "images" / "K.txt").unlink(missing_ok=True)
    xyz, colours = sample_surface(scene.parts, conf.points, rng)
    seen = np.stack([visible(cam, d, xyz) for cam, d in zip(cameras, depths, strict=True)])
    model = truth_model(names, cameras, seen, xyz, colours)
    write_model(model, out / "model")
    mesh = combined_mesh(scene.parts)
    mesh.export(out / "mesh.ply")
    if conf.depth:
        write_depths(out / "depth.h5", zip(names, depths, strict=True))
    timings["export"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    counts = {
        "images": len(names),
        "renders": len(names) * len(lightings),
        "triangles": int(len(mesh.faces)),
        "points3D": int(model.num_points3D()),
    }
    info = {"config": conf_to_dict(conf), "counts": counts, "timings_s": timings, "extent": scene.extent}
    (out / "synth.json").write_text(json.dumps(info, indent=2))
    logger.info("synth %s: %d images, %d triangles", conf.scene, len(names), counts["triangles"])
    return SynthResult(names, counts, {k: round(v, 3) for k, v in timings.items()})
