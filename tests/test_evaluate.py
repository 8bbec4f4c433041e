"""Evaluation protocols: Aachen-style scoring, make-night layout, Strecha scoring of a model."""

import json
import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sfmkit.eval.aachen import Subset, load_subsets, score_queries, summarize
from sfmkit.io.poses import Pose, read_pose_file
from sfmkit.io.strecha import read_scene
from sfmkit.pipelines.make_night import NIGHT_PREFIX, make_night


class FakeModel:
    """Just enough of a pycolmap.Reconstruction for score_queries (via model_poses)."""

    def __init__(self, poses: dict[str, Pose]):
        self.images = {i: _FakeImage(n, p) for i, (n, p) in enumerate(poses.items())}


class _FakeImage:
    def __init__(self, name: str, pose: Pose):
        self.name, self._pose, self.has_pose = name, pose, True

    def cam_from_world(self):
        class _T:
            pass

        t = _T()
        t.rotation = type("R", (), {"matrix": lambda _self: self._pose.rotation})()
        t.translation = self._pose.translation
        return t


def _similarity_copy(
    poses: dict[str, Pose], scale: float, rot: np.ndarray, shift: np.ndarray
) -> dict[str, Pose]:
    """The same cameras in another frame: x_new = (R^T (x - shift)) / scale."""
    out = {}
    for name, p in poses.items():
        centre = rot.T @ (p.center - shift) / scale
        r = p.rotation @ rot
        out[name] = Pose(r, -r @ centre)
    return out


def test_score_queries_aligns_on_day_images_only():
    rng = np.random.default_rng(0)
    ref = {
        f"{i}.jpg": Pose(Rotation.random(random_state=i).as_matrix(), rng.normal(0, 5, 3)) for i in range(8)
    }
    night = ["3.jpg", "5.jpg"]
    est = _similarity_copy(ref, 0.5, Rotation.random(random_state=99).as_matrix(), np.array([3.0, -1, 2]))
    # night query 5 is off by 2 m and 3 degrees, the other is exact; query 7 is a day image
    bad = est["5.jpg"]
    r = Rotation.from_euler("y", 3, degrees=True).as_matrix() @ bad.rotation
    est["5.jpg"] = Pose(r, -r @ (bad.center + np.array([4.0, 0, 0])))  # 4 est units = 2 m
    subset = Subset("s", None, sorted(ref), night, ref, None)  # type: ignore[arg-type]
    scores = score_queries(subset, FakeModel(est), {})
    assert scores["3.jpg"]["position_m"] < 1e-6 and scores["3.jpg"]["angle_deg"] < 1e-6
    assert scores["5.jpg"]["position_m"] == pytest.approx(2.0, rel=1e-6)
    assert scores["5.jpg"]["angle_deg"] == pytest.approx(3.0, rel=1e-6)
    del est["3.jpg"]
    scores = score_queries(subset, FakeModel(est), {})
    assert not scores["3.jpg"]["registered"]
    summary = summarize(list(scores.values()))
    assert summary["registered_pct"] == 50.0
    assert summary["within"]["5.0m,10.0deg"] == 50.0 and summary["within"]["1.0m,10.0deg"] == 0.0
    assert summary["within_v1.1"]["0.25m,2.0deg"] == 0.0


def test_aachen_with_intrinsics_refuses_subsets_without_a_calibration(tmp_path):
    from PIL import Image

    from sfmkit.errors import SfmkitError
    from sfmkit.eval.aachen import evaluate_aachen
    from sfmkit.io.poses import write_pose_file
    from sfmkit.pipelines.reconstruct import ReconstructConf

    subset = tmp_path / "subsets" / "0000"
    (subset / "images").mkdir(parents=True)
    for name in ("a.jpg", "night_b.jpg"):
        Image.new("RGB", (64, 48)).save(subset / "images" / name)
    (subset / "night.txt").write_text("night_b.jpg\n")
    write_pose_file(subset / "poses.txt", {n: Pose(np.eye(3), np.zeros(3)) for n in ("a.jpg", "night_b.jpg")})
    with pytest.raises(SfmkitError, match="no K.txt"):
        evaluate_aachen(
            tmp_path / "subsets", tmp_path / "eval", ["sfmkit"], ReconstructConf(), use_intrinsics=True
        )


@pytest.mark.slow
def test_make_night_layout_and_protocol_on_a_rendered_scene(cli, rendered_scene, tmp_path):
    scene_dir, _ = rendered_scene
    out = tmp_path / "subsets"
    subsets = make_night(scene_dir, out, seed=3, strength=0.5, max_size=480)
    assert len(subsets) == 8
    info = json.loads((out / "make_night.json").read_text())
    assert "not Aachen" in info["note"] and info["night"]["strength"] == 0.5
    first = out / "0000"
    names = sorted(p.name for p in (first / "images").iterdir())
    assert names[-1] == f"{NIGHT_PREFIX}0000.jpg" and len(names) == 8
    assert (first / "images" / "0001.jpg").resolve() == (out / "_images" / "day" / "0001.jpg").resolve()
    poses = read_pose_file(first / "poses.txt")
    truth = read_scene(scene_dir)
    np.testing.assert_allclose(poses[f"{NIGHT_PREFIX}0000.jpg"].center, truth["0000.png"].C, atol=1e-9)
    # deterministic for a seed
    again = make_night(scene_dir, tmp_path / "again", seed=3, strength=0.5, max_size=480)
    assert (again[0] / "images" / f"{NIGHT_PREFIX}0000.jpg").read_bytes() == (
        first / "images" / f"{NIGHT_PREFIX}0000.jpg"
    ).read_bytes()

    # the protocol on two subsets, sfmkit only (COLMAP's pipeline is exercised by benchmarks)
    for extra in subsets[2:]:
        shutil.rmtree(extra)
    assert [s.name for s in load_subsets(out)] == ["0000", "0001"]
    result = cli("evaluate", "aachen", str(out), "-o", str(tmp_path / "eval"), "--method", "sfmkit")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eval" / "results.json").read_text())
    summary = data["methods"]["sfmkit"]["summary"]
    assert summary["queries"] == 2 and summary["registered_pct"] == 100.0
    assert summary["within"]["0.5m,10.0deg"] == 100.0  # a mild night on an easy scene
    assert (tmp_path / "eval" / "curves.png").stat().st_size > 1000


def test_evaluate_strecha_scores_a_given_model(cli, reconstructed_scene, tmp_path):
    scene_dir, out = reconstructed_scene.scene_dir, reconstructed_scene.out
    assert reconstructed_scene.result.exit_code == 0
    result = cli(
        "evaluate",
        "strecha",
        str(scene_dir),
        "--model",
        str(out / "sfm"),
        "-o",
        str(tmp_path / "ev"),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    assert rows[0]["registered"] == 8 and rows[0]["position_m"]["max"] < 0.06
    assert set(rows[0]["cameras"]) == {f"{i:04d}.png" for i in range(8)}
    assert (tmp_path / "ev" / f"{scene_dir.name}.png").stat().st_size > 1000
    bad = cli("evaluate", "strecha", str(tmp_path), "-o", str(tmp_path / "x"))
    assert bad.exit_code == 2 and "not a Strecha scene" in bad.output
