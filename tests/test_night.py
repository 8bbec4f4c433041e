import numpy as np
import pytest
from helpers import textured_image

from sfmkit.io.poses import Pose, read_pose_file, write_pose_file
from sfmkit.synth.night import night_params, nightify


def luminance(rgb: np.ndarray) -> float:
    return float((rgb.astype(float) @ [0.299, 0.587, 0.114]).mean())


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0, 1.5])
def test_night_is_deterministic_and_darker(strength):
    day = textured_image(3, (320, 240))
    a = nightify(day, strength, np.random.default_rng(7))
    b = nightify(day, strength, np.random.default_rng(7))
    c = nightify(day, strength, np.random.default_rng(8))
    assert a.shape == day.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert luminance(a) < 0.85 * luminance(day)


def test_strength_reduces_light_and_adds_blur_and_lamps():
    weak, strong = night_params(0.0), night_params(1.5)
    assert strong.exposure < weak.exposure / 100
    assert strong.motion_blur > weak.motion_blur and strong.lamps > weak.lamps
    assert strong.sodium[2] < weak.sodium[2] < 1.0  # bluer light is lost first
    assert strong.jpeg_quality < weak.jpeg_quality


def test_stronger_night_loses_more_image_structure():
    day = textured_image(5, (320, 240)).astype(float)

    def correlation(strength: float) -> float:
        night = nightify(day.astype(np.uint8), strength, np.random.default_rng(0)).astype(float)
        return float(np.corrcoef(day.mean(2).ravel(), night.mean(2).ravel())[0, 1])

    assert correlation(0.0) > correlation(1.0) > correlation(2.0)


def test_pose_file_round_trip(tmp_path):
    from scipy.spatial.transform import Rotation

    poses = {
        "night_0001.jpg": Pose(
            Rotation.from_euler("xyz", [5, -40, 3], degrees=True).as_matrix(), np.array([1.0, 2, 3])
        ),
        "dir/a b.jpg": Pose(np.eye(3), np.zeros(3)),
    }
    write_pose_file(tmp_path / "poses.txt", poses)
    back = read_pose_file(tmp_path / "poses.txt")
    assert set(back) == set(poses)
    for name, pose in poses.items():
        np.testing.assert_allclose(back[name].rotation, pose.rotation, atol=1e-10)
        np.testing.assert_allclose(back[name].translation, pose.translation)
