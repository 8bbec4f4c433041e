"""Shared fixtures: the ``sfmkit`` command runner, a small rendered scene and its reconstruction
(each made once per session), tiny image folders; and the test tiers.

Tiers: ``python -m pytest`` runs the fast tier; tests marked ``slow`` (several reconstructions,
training runs, renders) run with ``python -m pytest -m slow``. Tests marked ``shared`` need the
datasets in ``../shared`` and are skipped when it is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from helpers import textured_image
from PIL import Image
from typer.testing import CliRunner

from sfmkit.cli.main import app

SHARED = Path(__file__).resolve().parents[2] / "shared"

Cli = Callable[..., Result]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if (SHARED / "datasets").is_dir():
        return
    skip = pytest.mark.skip(reason=f"../shared datasets absent ({SHARED})")
    for item in items:
        if "shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cli() -> Cli:
    """``cli("extract", folder, "-o", out)`` runs ``sfmkit --no-progress extract ...`` in-process
    (arguments converted to strings) and returns click's result (``exit_code``, ``output``)."""
    runner = CliRunner()

    def run(*args: object) -> Result:
        return runner.invoke(app, ["--no-progress", *(str(a) for a in args)])

    return run


@pytest.fixture(scope="session")
def rendered_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """8 images (480x360) of a textured blocks scene seen from an arc of cameras, with exact
    cameras in the Strecha layout (ray-cast, so it needs no OpenGL)."""
    from sfmkit.synth.raycast import arc_cameras, blocks_scene, write_dataset

    out = tmp_path_factory.mktemp("scene")
    scene = blocks_scene(seed=0)
    write_dataset(out, scene, arc_cameras(8, seed=0))
    return out, scene


@dataclass(frozen=True)
class Reconstructed:
    """``sfmkit reconstruct`` of the rendered scene: its folder, scene, output and CLI result."""

    scene_dir: Path
    scene: object
    out: Path
    result: Result


@pytest.fixture(scope="session")
def reconstructed_scene(
    rendered_scene: tuple[Path, object], cli: Cli, tmp_path_factory: pytest.TempPathFactory
) -> Reconstructed:
    """The default pipeline run once on :func:`rendered_scene` (tests must not change it)."""
    scene_dir, scene = rendered_scene
    out = tmp_path_factory.mktemp("reconstructed") / "out"
    return Reconstructed(scene_dir, scene, out, cli("reconstruct", scene_dir / "images", "-o", out))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Four small RGB JPEGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(textured_image(i)).save(folder / f"im{i}.jpg", quality=95)
    return folder
