"""Shared fixtures: a small rendered scene (once per session) and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import textured_image
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def rendered_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """8 images (480x360) of a textured blocks scene seen from an arc of cameras."""
    from sfmkit.synth.raycast import arc_cameras, blocks_scene, write_dataset

    out = tmp_path_factory.mktemp("scene")
    scene = blocks_scene(seed=0)
    cameras = arc_cameras(8, seed=0)
    write_dataset(out, scene, cameras)
    return out, scene


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Four small RGB JPEGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(textured_image(i)).save(folder / f"im{i}.jpg", quality=95)
    return folder
