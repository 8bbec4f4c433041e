from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from scipy.spatial.transform import Rotation

from sfmkit.errors import SfmkitError
from sfmkit.io.strecha import StrechaCamera, read_camera, read_scene, write_camera

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fountain-P11"


def test_camera_file_round_trip_and_projection_convention(tmp_path):
    k = np.array([[700.0, 0, 380], [0, 701, 250], [0, 0, 1]])
    r_c2w = Rotation.from_euler("xyz", [10, -20, 5], degrees=True).as_matrix()
    cam = StrechaCamera(k, r_c2w, np.array([1.0, -2.0, 0.5]), (768, 512))
    write_camera(tmp_path / "a.jpg.camera", cam)
    back = read_camera(tmp_path / "a.jpg.camera")
    np.testing.assert_allclose(back.K, k)
    np.testing.assert_allclose(back.R_c2w, r_c2w, atol=1e-9)
    np.testing.assert_allclose(back.C, cam.C)
    assert back.size == (768, 512)
    # cam_from_world maps the centre to the origin and X to K R^T (X - C)
    x = np.array([3.0, 1.0, 7.0])
    pose = back.pose
    np.testing.assert_allclose(pose.rotation @ back.C + pose.translation, 0, atol=1e-9)
    np.testing.assert_allclose(pose.rotation @ x + pose.translation, r_c2w.T @ (x - back.C), atol=1e-9)


def test_bad_camera_files(tmp_path):
    (tmp_path / "gt_dense_cameras").mkdir()
    (tmp_path / "gt_dense_cameras" / "x.jpg.camera").write_text("1 2 3")
    with pytest.raises(SfmkitError, match="26 numbers"):
        read_scene(tmp_path)
    with pytest.raises(SfmkitError, match="not a Strecha scene"):
        read_scene(tmp_path / "nope")


def test_bundled_example_ground_truth_is_consistent():
    cams = read_scene(EXAMPLE)
    assert len(cams) == 11
    k = np.loadtxt(EXAMPLE / "images" / "K.txt")
    for cam in cams.values():
        np.testing.assert_allclose(cam.K, k, rtol=1e-5)
        assert cam.size == (768, 512)


@pytest.mark.shared
def test_shared_strecha_scenes_parse():
    for scene in ("fountain-P11", "Herz-Jesus-P8"):
        cams = read_scene(SHARED / "datasets" / "strecha" / scene)
        assert len(cams) in (8, 11)
        for cam in cams.values():
            assert cam.size == (3072, 2048)
            np.testing.assert_allclose(cam.R_c2w @ cam.R_c2w.T, np.eye(3), atol=1e-5)
