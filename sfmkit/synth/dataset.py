"""Render a scene from a camera layout into a dataset folder with exact ground truth.

Layout (Strecha-like, so the Strecha reader and evaluation apply unchanged)::

    OUT/images/<name>.png          rendered images
    OUT/images/K.txt               the shared intrinsics
    OUT/gt_dense_cameras/<name>.camera
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from sfmkit.eval.strecha import StrechaCamera, write_camera
from sfmkit.synth.render import render
from sfmkit.synth.scene import PinholeCamera, Scene
from sfmkit.utils.progress import track


def write_dataset(
    out: Path, scene: Scene, cameras: Sequence[PinholeCamera], supersample: int = 2
) -> list[str]:
    """Render every camera; returns the image names."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt_dense_cameras").mkdir(parents=True, exist_ok=True)
    names = []
    for i, cam in enumerate(track(cameras, "render")):
        name = f"{i:04d}.png"
        image, _ = render(scene, cam, supersample)
        Image.fromarray(image).save(out / "images" / name)
        write_camera(
            out / "gt_dense_cameras" / f"{name}.camera",
            StrechaCamera(K=cam.K, R_c2w=cam.R.T, C=cam.center, size=(cam.width, cam.height)),
        )
        names.append(name)
    k = cameras[0].K
    (out / "images" / "K.txt").write_text("\n".join(" ".join(f"{v:.10g}" for v in row) for row in k) + "\n")
    return names
