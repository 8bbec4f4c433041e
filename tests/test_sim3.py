import numpy as np
from scipy.spatial.transform import Rotation

from sfmkit.eval.poses import pose_errors, rotation_error_deg
from sfmkit.geometry.sim3 import Sim3, robust_umeyama, umeyama
from sfmkit.io.poses import Pose


def random_sim3(seed: int) -> Sim3:
    rng = np.random.default_rng(seed)
    return Sim3(
        float(rng.uniform(0.5, 3)), Rotation.random(random_state=seed).as_matrix(), rng.normal(0, 5, 3)
    )


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (20, 3))
    t = random_sim3(1)
    est = umeyama(x, t.apply(x))
    assert abs(est.scale - t.scale) < 1e-9
    np.testing.assert_allclose(est.rotation, t.rotation, atol=1e-9)
    np.testing.assert_allclose(est.translation, t.translation, atol=1e-9)


def test_robust_alignment_ignores_20_percent_outlier_cameras():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (20, 3))
    t = random_sim3(3)
    y = t.apply(x)
    y[:4] += rng.normal(0, 5, (4, 3))  # 4 of 20 wrong cameras
    est, mask = robust_umeyama(x, y)
    assert mask.sum() == 16 and not mask[:4].any()
    np.testing.assert_allclose(est.apply(x[4:]), y[4:], atol=1e-8)


def test_pose_errors_zero_for_ground_truth_and_known_rotation_perturbation():
    rng = np.random.default_rng(4)
    ref = {}
    for i in range(6):
        r = Rotation.random(random_state=i).as_matrix()
        ref[f"{i}.jpg"] = Pose(r, rng.normal(0, 3, 3))
    same = pose_errors(ref, ref)
    assert max(same.position.values()) < 1e-9 and max(same.rotation.values()) < 1e-6
    # an estimate in another frame (similarity) with one camera rotated by 2 degrees
    sim = random_sim3(5)
    est = {}
    for name, p in ref.items():
        center = (p.center - sim.translation) @ sim.rotation / sim.scale  # inverse similarity
        r = p.rotation @ sim.rotation
        if name == "0.jpg":
            r = Rotation.from_euler("x", 2, degrees=True).as_matrix() @ r
        est[name] = Pose(r, -r @ center)
    errors = pose_errors(ref, est)
    assert max(errors.position.values()) < 1e-6
    assert abs(errors.rotation["0.jpg"] - 2.0) < 1e-6
    assert max(v for k, v in errors.rotation.items() if k != "0.jpg") < 1e-6
    assert (
        abs(rotation_error_deg(np.eye(3), Rotation.from_euler("z", 30, degrees=True).as_matrix()) - 30) < 1e-9
    )
