"""Featuremetric bundle adjustment: the camera models, the adjustment, the stage and its command."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
import torch

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.refinement.bundle import BundleConf, bundle_adjust, featuremetric_ba, project

MODELS = {
    "SIMPLE_PINHOLE": [500.0, 320.5, 240.2],
    "PINHOLE": [500.0, 480.0, 320.5, 240.2],
    "SIMPLE_RADIAL": [500.0, 320.5, 240.2, -0.08],
    "RADIAL": [500.0, 320.5, 240.2, -0.08, 0.02],
    "OPENCV": [500.0, 480.0, 320.5, 240.2, -0.08, 0.02, 0.001, -0.002],
}


@pytest.mark.parametrize("model", MODELS)
def test_projection_is_colmaps(model):
    camera = pycolmap.Camera(model=model, width=640, height=480, params=MODELS[model])
    rng = np.random.default_rng(0)
    xc = np.column_stack([rng.uniform(-1, 1, (50, 2)), rng.uniform(1.5, 4, 50)])
    params = torch.tensor(np.tile(camera.params, (50, 1)))
    ours = project(model, params, torch.from_numpy(xc)).numpy()
    assert np.allclose(ours, camera.img_from_cam(xc), atol=1e-9)


def test_parameters_padded_for_wider_camera_models_are_ignored():
    """A reconstruction with cameras of several models stores every camera's parameters in one
    array as wide as the widest model; each model reads only its own."""
    rng = np.random.default_rng(1)
    xc = torch.from_numpy(np.column_stack([rng.uniform(-1, 1, (20, 2)), rng.uniform(1.5, 4, 20)]))
    for model, params in MODELS.items():
        own = torch.tensor(np.tile(params, (20, 1)))
        padded = torch.cat([own, torch.full((20, 8 - len(params)), 7.0, dtype=torch.float64)], 1)
        assert torch.equal(project(model, padded, xc), project(model, own, xc))


def test_unknown_camera_model_is_refused():
    with pytest.raises(SfmkitError, match="camera model"):
        project("FISHEYE", torch.zeros(1, 4), torch.ones(1, 3))


def _reprojection(rec: pycolmap.Reconstruction) -> float:
    """Median distance between each observation's keypoint and its point's projection."""
    errors = []
    for image in rec.images.values():
        for p in image.points2D:
            if p.has_point3D():
                uv = image.project_point(rec.points3D[p.point3D_id].xyz)
                errors.append(np.linalg.norm(uv - p.xy))
    return float(np.median(errors))


def _rotation_between(a: pycolmap.Rigid3d, b: pycolmap.Rigid3d) -> float:
    r = a.rotation.matrix() @ b.rotation.matrix().T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def test_featuremetric_ba_undoes_a_perturbation(reconstructed_scene):
    """Points pushed off by about 2 px and one camera turned by 0.15 degrees: the adjustment must
    bring the projections back near the keypoints that define each point's reference, and the
    camera back near its pose (doing nothing, or making it worse, fails)."""
    assert reconstructed_scene.result.exit_code == 0, reconstructed_scene.result.output
    images = reconstructed_scene.scene_dir / "images"
    rec = pycolmap.Reconstruction(reconstructed_scene.out / "sfm")
    mapped = _reprojection(rec)
    rng = np.random.default_rng(1)
    ids = sorted(rec.reg_image_ids())
    focal = rec.images[ids[0]].camera.mean_focal_length()
    for point in rec.points3D.values():
        depth = np.linalg.norm(point.xyz - rec.images[ids[0]].projection_center())
        point.xyz = point.xyz + rng.normal(0, 1.2 * depth / focal, 3)
    turned = rec.images[ids[3]]
    original = turned.cam_from_world()
    kick = pycolmap.Rotation3d(np.radians([0.15, 0.0, 0.0]))
    pose = pycolmap.Rigid3d(kick * original.rotation, original.translation)
    rec.frames[turned.frame_id].set_cam_from_world(turned.camera_id, pose)
    perturbed = _reprojection(rec)
    assert perturbed > 1.5 * mapped
    stats = featuremetric_ba(rec, images, BundleConf(rounds=6))
    adjusted = _reprojection(rec)
    assert stats["cost_final"] < 0.8 * stats["cost_initial"]
    assert adjusted < mapped + 0.5 * (perturbed - mapped), (mapped, perturbed, adjusted)
    left = _rotation_between(rec.images[ids[3]].cam_from_world(), original)
    assert left < 0.05, left
    # the points' stored errors (the reported reprojection error) follow the adjusted geometry
    stored = rec.compute_mean_reprojection_error()
    rec.update_point_3d_errors()
    assert stored == pytest.approx(rec.compute_mean_reprojection_error())


def test_bundle_adjust_stage_and_command(reconstructed_scene, tmp_path, monkeypatch, cli):
    model = reconstructed_scene.out / "sfm"
    images = reconstructed_scene.scene_dir / "images"
    out = tmp_path / "ba"
    first = bundle_adjust(BundleConf(rounds=1), model, images, out)
    assert first.reconstruction.num_reg_images() == pycolmap.Reconstruction(model).num_reg_images()
    assert (out / "model.ply").is_file()
    assert json.loads((out / "ba-run.json").read_text())["stats"]["points"] > 100
    # the same model and options: reused
    import sfmkit.refinement.bundle as bundle_mod

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(bundle_mod, "featuremetric_ba", boom)
    assert bundle_adjust(BundleConf(rounds=1), model, images, out).stats == first.stats
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="other options"):
        bundle_adjust(BundleConf(rounds=2), model, images, out)
    with pytest.raises(SfmkitError, match="holds no COLMAP model"):
        bundle_adjust(BundleConf(), tmp_path, images, out)
    with pytest.raises(SfmkitError, match="another folder"):
        bundle_adjust(BundleConf(), model, images, model)
    with pytest.raises(ConfigError):
        BundleConf(window=4)
    r = cli("bundle-adjust", model, images, "-o", tmp_path / "cmd", "--points-only")
    assert r.exit_code == 0, r.output
    assert "projection moves" in r.output
    recorded = json.loads((tmp_path / "cmd" / "report.json").read_text())["bundle-adjust"]
    assert recorded["config"]["poses"] is False


def test_reconstruct_takes_the_bundle_adjustment_by_default_for_dense_features_or_when_asked():
    from sfmkit.features import get_conf
    from sfmkit.pipelines.reconstruct import ReconstructConf, run_config

    assert ReconstructConf().bundle_conf() == BundleConf()  # dense VGG16's default
    assert ReconstructConf().stage_confs()[2].name == "featuremetric"
    for off in (ReconstructConf(refine="keypoints"), ReconstructConf(features=get_conf("sift"))):
        assert off.bundle_conf() is None
        assert "bundle" not in run_config(off)  # older outputs keep their config
    conf = ReconstructConf(refine="keypoints+ba")
    assert conf.bundle_conf() == BundleConf() and conf.stage_confs()[2].name == "featuremetric"
    assert run_config(conf)["bundle"]["window"] == BundleConf().window
    assert ReconstructConf(refine="featuremetric-vgg+ba").stage_confs()[2].name == "featuremetric-vgg"
    with pytest.raises(ConfigError):
        ReconstructConf(refine="none+ba")
    from sfmkit.reconstruction.cameras import CameraConf
    from sfmkit.reconstruction.mapping import MapConf

    fisheye = MapConf(camera=CameraConf(model="OPENCV_FISHEYE"))
    with pytest.raises(ConfigError, match="OPENCV_FISHEYE"):
        ReconstructConf(refine="keypoints+ba", mapping=fisheye)
    ReconstructConf(refine="keypoints", mapping=fisheye)  # without the adjustment: any model
    # the default adjustment is left out for a model it cannot adjust, not refused
    assert ReconstructConf(mapping=fisheye).bundle_conf() is None
    assert ReconstructConf(mapping=fisheye).stage_confs()[2].name == "featuremetric"
