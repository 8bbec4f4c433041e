"""``--mapper global|hierarchical``: pycolmap's GLOMAP and hierarchical mappers behind the map stage."""

from __future__ import annotations

import json

import pycolmap
import pytest

from sfmkit.errors import ConfigError
from sfmkit.eval.strecha import score_model
from sfmkit.reconstruction.mapping import MapConf


@pytest.mark.parametrize("mapper", ["global", "hierarchical"])
def test_global_and_hierarchical_mappers_recover_the_rendered_cameras(
    cli, reconstructed_scene, tmp_path, mapper
):
    """On the verified matches of the default pipeline, each mapper registers all eight rendered
    views, with camera centres about as close to the exact ones as the incremental model's."""
    out = reconstructed_scene.out
    assert reconstructed_scene.result.exit_code == 0, reconstructed_scene.result.output
    verified = next(out.glob("verified-*.h5"))
    pairs = next(out.glob("pairs-*.txt"))
    images = reconstructed_scene.scene_dir / "images"
    model_dir = tmp_path / mapper
    result = cli(
        "map", images, verified, "--pairs", pairs, "-o", model_dir, "--mapper", mapper,
        "--intrinsics", images / "K.txt",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rec = pycolmap.Reconstruction(model_dir)
    assert rec.num_reg_images() == 8
    score = score_model(reconstructed_scene.scene_dir, rec)
    incremental = score_model(reconstructed_scene.scene_dir, pycolmap.Reconstruction(out / "sfm"))
    # measured: global 0.0077, incremental 0.0117 scene units (median centre error)
    assert score["position_m"]["median"] < 2 * incremental["position_m"]["median"]
    report = json.loads((model_dir / "report.json").read_text())
    assert report["map"]["config"]["mapper"] == mapper


def test_unknown_mapper_is_refused():
    with pytest.raises(ConfigError, match="unknown mapper"):
        MapConf(mapper="magic")


def test_a_written_model_replaces_every_file_of_the_old_one(tmp_path):
    from sfmkit.io.colmap_model import MODEL_FILES, PLY_FILE, clear_model, write_model

    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "images.bin").write_bytes(b"stale")
    write_model(pycolmap.Reconstruction(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {*MODEL_FILES, PLY_FILE, "report.json"}
    assert (tmp_path / "images.bin").read_bytes() != b"stale"
    assert pycolmap.Reconstruction(tmp_path).num_reg_images() == 0
    clear_model(tmp_path)  # a run that reconstructs nothing leaves no model, other files stay
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
