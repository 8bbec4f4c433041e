"""GL3D overlap labels: analytic overlap of two nadir cameras, exact CT, CO thresholds, masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from sfmkit.io.labels import read_labels
from sfmkit.labels import overlap
from sfmkit.pipelines.build_gl3d_labels import LabelsConf, build_gl3d_labels
from sfmkit.synth.cameras import PinholeCamera
from sfmkit.synth.truth import truth_model, write_model

F, W, H, ALT = 100.0, 200, 100, 10.0  # nadir cameras: footprint 20 m x 10 m at 10 m
NADIR = np.diag([1.0, -1.0, -1.0])  # x right, y down in the image = -y in the world, looking down


def _nadir(x: float) -> PinholeCamera:
    k = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]])
    centre = np.array([x, 0.0, ALT])
    return PinholeCamera(k, NADIR, -NADIR @ centre, W, H)


@pytest.fixture
def plane_scene(tmp_path):
    """Two nadir cameras 6 m apart over a finely tessellated plane: overlap 14 of 20 m."""
    plane = trimesh.creation.box((40.0, 30.0, 0.0))
    v, f = trimesh.remesh.subdivide_to_size(plane.vertices, plane.faces, max_edge=0.25)
    mesh = trimesh.Trimesh(v, f)
    mesh.export(tmp_path / "plane.ply")
    cams = [_nadir(0.0), _nadir(6.0)]
    write_model(
        truth_model(
            ["a.png", "b.png"], cams, np.zeros((2, 0), bool), np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
        ),
        tmp_path / "model",
    )
    return tmp_path


def test_mesh_overlap_and_masks_match_the_analytic_values(plane_scene):
    conf = LabelsConf(mesh=str(plane_scene / "plane.ply"), plot_pairs=0)
    result = build_gl3d_labels(plane_scene / "model", plane_scene / "labels.h5", conf)
    labels = result.labels
    assert labels.mesh[0, 1] == pytest.approx(0.7, abs=0.02)
    assert labels.mesh[0, 1] == labels.mesh[1, 0]
    assert labels.common_track[0, 1] == 0.0  # no tracks: CO falls back to MO
    assert labels.combined[0, 1] == pytest.approx(labels.mesh[0, 1])
    assert [tuple(p) for p in labels.strong] == [(0, 1)]

    cells = (np.arange(32) + 0.5) / 32 * W  # cell-centre columns in pixels
    x_a = (cells - W / 2) / F * ALT  # world x of each column in camera a (at x = 0)
    expected_a = np.tile(x_a >= -4.0 + 0.0, (32, 1))  # b covers x in [-4, 16]
    expected_b = np.tile(x_a + 6.0 <= 10.0, (32, 1))  # a covers x in [-10, 10]
    for got, expected in ((labels.masks[(0, 1)], expected_a), (labels.masks[(1, 0)], expected_b)):
        iou = (got & expected).sum() / (got | expected).sum()
        assert iou > 0.9, iou
    # Reading the file back gives the same labels.
    again = read_labels(plane_scene / "labels.h5")
    assert again.names == ["a.png", "b.png"]
    assert np.array_equal(again.masks[(0, 1)], labels.masks[(0, 1)])
    assert json.loads(again.attrs["strong"]) == [0.5, 1.0]


def test_disjoint_cameras_have_no_overlap(tmp_path):
    plane = trimesh.creation.box((100.0, 30.0, 0.0))
    v, f = trimesh.remesh.subdivide_to_size(plane.vertices, plane.faces, max_edge=0.5)
    trimesh.Trimesh(v, f).export(tmp_path / "plane.ply")
    write_model(
        truth_model(
            ["a", "b"],
            [_nadir(-20.0), _nadir(20.0)],
            np.zeros((2, 0), bool),
            np.zeros((0, 3)),
            np.zeros((0, 3), np.uint8),
        ),
        tmp_path / "m",
    )
    labels = build_gl3d_labels(
        tmp_path / "m", tmp_path / "l.h5", LabelsConf(mesh=str(tmp_path / "plane.ply"), plot_pairs=0)
    ).labels
    assert labels.mesh[0, 1] == 0.0 and not labels.masks
    assert len(labels.strong) == len(labels.weak) == 0


def test_common_track_ratio_on_a_hand_made_model(tmp_path):
    # Points 0-5 seen by images 0 and 1, 6-8 by 1 and 2, 9-12 by 0 and 2, 13 by all three.
    seen = np.zeros((3, 14), bool)
    seen[[0, 1], 0:6] = seen[[1, 2], 6:9] = seen[[0, 2], 9:13] = seen[:, 13] = True
    cams = [_nadir(x) for x in (0.0, 1.0, 2.0)]
    xyz = np.random.default_rng(0).uniform(-3, 3, (14, 3)) * [1, 1, 0]
    rec = truth_model(["a", "b", "c"], cams, seen, xyz, np.zeros((14, 3), np.uint8))
    tracks = [
        np.array([p.point3D_id for p in img.points2D if p.has_point3D()])
        for img in (rec.image(i) for i in (1, 2, 3))
    ]
    ct = overlap.set_overlap(overlap.track_incidence(tracks))
    # |P0| = 11, |P1| = 10, |P2| = 8; common: 7 (0-1), 4 (1-2), 5 (0-2)
    assert ct[0, 1] == pytest.approx(7 / np.sqrt(11 * 10))
    assert ct[1, 2] == pytest.approx(4 / np.sqrt(10 * 8))
    assert ct[0, 2] == pytest.approx(5 / np.sqrt(11 * 8))
    assert np.allclose(ct, ct.T) and np.allclose(np.diag(ct), 1.0)


def test_combined_label_and_positive_intervals():
    ct = np.array([[1, 0.25, 0.1, 0.0], [0.25, 1, 0.0, 0.0], [0.1, 0.0, 1, 0.19], [0.0, 0.0, 0.19, 1]])
    mo = np.array([[1, 0.3, 0.6, 0.05], [0.3, 1, 0.2, 0.0], [0.6, 0.2, 1, 0.5], [0.05, 0.0, 0.5, 1]])
    co = overlap.combined(ct, mo, t_sfm=0.2)
    assert co[0, 1] == 1.0  # CT above t_sfm wins
    assert co[0, 2] == pytest.approx(0.6) and co[2, 3] == pytest.approx(0.5)  # else MO
    strong = {tuple(p) for p in overlap.positive_pairs(co, (0.5, 1.0))}
    weak = {tuple(p) for p in overlap.positive_pairs(co, (0.05, 0.2))}
    assert strong == {(0, 1), (0, 2), (2, 3)}  # closed intervals: 0.5 is strong
    assert weak == {(0, 3), (1, 2)}  # 0.05 and 0.2 are weak


def test_labels_from_a_rendered_scene_cli(cli, tmp_path):
    """Exact mesh vs --mesh-from-model on a rendered scene; CT from the true tracks agrees with MO."""
    scene = tmp_path / "scene"
    r = cli("synth", str(scene), "-n", "5", "--size", "160x120", "--points", "8000")
    assert r.exit_code == 0, r.output
    r = cli(
        "build-gl3d-labels",
        str(scene / "model"),
        "--mesh",
        str(scene / "mesh.ply"),
        "-o",
        str(tmp_path / "exact.h5"),
        "--gl3d-text",
        str(tmp_path / "gl3d"),
    )
    assert r.exit_code == 0, r.output
    exact = read_labels(tmp_path / "exact.h5")
    off = ~np.eye(5, dtype=bool)
    # CT counts only points seen twice or more, so it runs above MO, but the two agree in order.
    assert np.corrcoef(exact.common_track[off], exact.mesh[off])[0, 1] > 0.8
    assert (tmp_path / "exact_masks.png").stat().st_size > 10_000
    lines = (tmp_path / "gl3d" / "mesh_overlap.txt").read_text().split("\n")
    i, j, ratio = lines[0].split()
    assert float(ratio) == pytest.approx(exact.mesh[int(i), int(j)], abs=1e-5)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["build-gl3d-labels"]["counts"]["images"] == 5

    r = cli(
        "build-gl3d-labels",
        str(scene / "model"),
        "--mesh-from-model",
        "--poisson-depth",
        "8",
        "--plot-pairs",
        "0",
    )  # no -o: labels.h5 beside the model folder
    assert r.exit_code == 0, r.output
    poisson = read_labels(scene / "labels.h5", masks=False)
    assert (scene / "labels.mesh.ply").is_file()
    # The Poisson surface covers what the tracks cover (surface seen twice or more): its MO
    # follows CT closely, and the exact MO in order.
    assert np.abs(poisson.mesh - exact.common_track)[off].mean() < 0.06
    assert np.corrcoef(poisson.mesh[off], exact.mesh[off])[0, 1] > 0.8


def test_labels_need_a_surface(cli, tmp_path, plane_scene):
    r = cli("build-gl3d-labels", str(plane_scene / "model"), "-o", str(tmp_path / "x.h5"))
    assert r.exit_code == 2 and "--mesh-from-model" in r.output
    r = cli(
        "build-gl3d-labels",
        str(tmp_path),
        "--mesh",
        "m.ply",
        "-o",
        str(tmp_path / "x.h5"),
    )
    assert r.exit_code == 2 and "not a COLMAP model" in r.output
