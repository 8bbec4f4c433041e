"""Learned multiscale keypoints: network geometry, detection, losses, patches, training,
evaluation and ``reconstruct --features multiscale-kp`` on a rendered scene."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pycolmap
import pytest
import torch

from sfmkit.errors import ConfigError
from sfmkit.eval.patches import average_precision, retrieval_accuracy
from sfmkit.features.multiscale_kp import MultiscaleKPConf, MultiscaleKPExtractor, detect, shifted_score_maps
from sfmkit.io.images import LoadedImage
from sfmkit.io.patches import read_patches
from sfmkit.models.keypoints import (
    PATCH_SIZES,
    RECURSIONS,
    MultiscaleDetector,
    crop_patches,
    level_to_pixels,
    load_network,
)
from sfmkit.train.keypoints import detector_loss, hardest_triplet_loss, shape_target
from sfmkit.train.patches import discretise_sizes


def test_every_branch_ends_in_two_by_two_scores():
    net = MultiscaleDetector().eval()
    for size in PATCH_SIZES:
        x = net.trunk(torch.zeros(1, 1, size, size))
        for _ in range(RECURSIONS[size]):
            x = net.recursive(x)
        assert net.head(x).shape[-2:] == (2, 2)
        assert net(torch.zeros(3, 1, size, size), size).shape == (3,)
    with pytest.raises(ValueError):
        net(torch.zeros(1, 1, 80, 80), 80)


@pytest.mark.parametrize("level", [0, 2, 5])
def test_score_map_position_maps_to_receptive_field_centre(level):
    """The gradient of one score reaches exactly the pixels of its receptive field, and the
    field is centred where level_to_pixels says."""
    torch.manual_seed(0)
    net = MultiscaleDetector().eval()
    image = torch.rand(1, 1, 300, 260, requires_grad=True)
    score = net.score_maps(image, [level])[level]
    i, j = 3, 4
    score[i, j].backward()
    rows = torch.nonzero(image.grad[0, 0].abs().sum(1) > 0)[:, 0]
    cols = torch.nonzero(image.grad[0, 0].abs().sum(0) > 0)[:, 0]
    assert (rows.min() + rows.max()) / 2 == pytest.approx(level_to_pixels(i, level), abs=0.5)
    assert (cols.min() + cols.max()) / 2 == pytest.approx(level_to_pixels(j, level), abs=0.5)
    # the field is about the patch side of the level
    assert abs(int(rows.max() - rows.min() + 1) - (64 + 16 * level)) <= 16


def test_detect_returns_the_planted_peaks_with_their_scale():
    shape = (20, 30)
    maps = {r: torch.zeros(shape[0] - 2 * r - 2, shape[1] - 2 * r - 2) for r in range(4)}
    maps[0][5, 7] = 3.0  # trunk cell (6, 8)
    maps[3][2, 10] = 2.0  # trunk cell (6, 14)
    maps[3][2, 11] = 1.0  # a weaker neighbour: suppressed, and pulls the sub-cell position right
    xy, scores, levels = detect(maps, shape, max_keypoints=2, min_score=0.5)
    order = np.argsort(-scores)
    xy, scores, levels = xy[order], scores[order], levels[order]
    assert scores.tolist() == [3.0, 2.0]
    assert levels.tolist() == [0, 3]
    assert xy[0] == pytest.approx([8 * 8 + 19, 8 * 6 + 19])
    assert xy[1, 1] == pytest.approx(8 * 6 + 19)
    assert 8 * 14 + 19 < xy[1, 0] < 8 * 14 + 19 + 4


def test_finer_grid_interleaves_shifted_runs():
    torch.manual_seed(0)
    net = MultiscaleDetector().eval()
    x = torch.rand(1, 1, 200, 260)
    with torch.inference_mode():
        fine, shape = shifted_score_maps(net, x, [0, 2], 4)
        plain, plain_shape = shifted_score_maps(net, x, [0, 2], 8)
        shifted = net.score_maps(x[..., 4:, 4:], [0, 2])
        right = net.score_maps(x[..., :, 4:], [0, 2])  # shifted along x only: odd columns
    assert plain_shape == tuple(net.trunk(x).shape[-2:]) and shape[0] >= 2 * plain_shape[0] - 2
    for r in (0, 2):
        h, w = fine[r][0::2, 0::2].shape
        assert torch.equal(fine[r][0::2, 0::2], plain[r][:h, :w])
        h, w = fine[r][1::2, 1::2].shape
        assert torch.equal(fine[r][1::2, 1::2], shifted[r][:h, :w])
        h, w = fine[r][0::2, 1::2].shape
        assert torch.equal(fine[r][0::2, 1::2], right[r][:h, :w])
    # a peak at fine index (row 5, column 7) of level 2 is pixel 4 u + 8 (r + 1) + 19
    maps = {r: torch.zeros_like(m) for r, m in fine.items()}
    maps[2][5, 7] = 1.0
    xy, _, levels = detect(maps, shape, max_keypoints=1, min_score=0.5, step=4)
    assert levels.tolist() == [2]
    assert xy[0] == pytest.approx([4 * 7 + 24 + 19, 4 * 5 + 24 + 19])


def test_detector_and_triplet_losses():
    pos = torch.tensor([2.0, 0.5])
    neg = torch.tensor([-2.0, 0.0])
    jit = torch.tensor([0.5])
    h = torch.tensor([0.5])
    loss, parts = detector_loss(pos, jit, h, neg, hinge_weight=0.5)
    hinge = (0 + 0.5 + 0 + 1) / 4
    shape = (1 + 0.25 + 0 + 4 + 0) / 5
    assert parts["hinge"] == pytest.approx(hinge)
    assert parts["shape"] == pytest.approx(shape)
    assert float(loss) == pytest.approx(0.5 * hinge + 0.5 * shape)
    assert shape_target(np.array([[0.0, 0.0], [64.0, 0.0]]), 64, 0.2) == pytest.approx(
        [1.0, np.exp(-1 / 0.08)]
    )

    # two points; the negative of anchor 0 is the closest view of point 1
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    p = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.6, 0.8]]), dim=1)
    loss, parts = hardest_triplet_loss(a, p, margin=0.2)
    d_ap = (a - p).norm(dim=1)
    d_an0 = min((a[0] - a[1]).norm(), (a[0] - p[1]).norm())
    d_an1 = min((a[1] - a[0]).norm(), (a[1] - p[0]).norm())
    expected = (torch.relu(d_ap[0] - d_an0 + 0.2) + torch.relu(d_ap[1] - d_an1 + 0.2)) / 2
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_patch_helpers_and_metrics():
    assert discretise_sizes(np.array([10, 70, 110, 160, 230, 1000])).tolist() == [64, 64, 96, 192, 256, 256]
    gray = torch.arange(100 * 120, dtype=torch.float32).reshape(100, 120) % 251
    crops = crop_patches(gray, np.array([[40.5, 50.5], [60.0, 30.0]]), 64)
    assert crops.shape == (2, 64, 64)
    # an integer+0.5 centre of an even side is an exact pixel crop
    assert np.array_equal(crops[0], gray[50 - 31 : 50 + 33, 40 - 31 : 40 + 33].numpy().astype(np.uint8))
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([0, 1, 1])) == pytest.approx(
        (1 / 2 + 2 / 3) / 2
    )
    desc = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 0.0], [0.0, 1.0]])
    acc = retrieval_accuracy(desc, np.array([0]), np.array([[1, 2, 3]]))
    assert acc["top1"] == 1.0 and acc["mean_rank"] == 0
    acc = retrieval_accuracy(desc, np.array([0]), np.array([[2, 1, 3]]))
    assert acc["top1"] == 0.0 and acc["top5"] == 1.0


def test_shipped_weights_load():
    for kind in ("detector", "descriptor"):
        net, card = load_network(kind, "default")
        assert card["command"].startswith("sfmkit train ")
        assert not net.training


def test_small_images_are_upsampled_and_keypoints_map_back():
    rng = np.random.default_rng(3)
    noise = torch.from_numpy(rng.uniform(0, 255, (1, 3, 38, 50)).astype(np.float32))
    texture = torch.nn.functional.interpolate(noise, size=(300, 400), mode="bicubic")
    rgb = texture[0].permute(1, 2, 0).clamp(0, 255).numpy().astype(np.uint8)
    # the loaded image is half the full-resolution 800 x 600 image
    image = LoadedImage(rgb=rgb, size=(800, 600), scale=(2.0, 2.0))
    out = {}
    for min_size in (0, 1600):
        conf = MultiscaleKPConf(min_size=min_size, detector="random", descriptor="random")
        out[min_size] = MultiscaleKPExtractor(conf, torch.device("cpu"))(image)
    native, upsampled = out[0], out[1600]
    assert len(upsampled["keypoints"]) > 4 * len(native["keypoints"]) > 0
    for feats, factor in ((native, 1.0), (upsampled, 4.0)):
        kp = feats["keypoints"]
        assert (kp >= 0).all() and (kp[:, 0] <= 800).all() and (kp[:, 1] <= 600).all()
        # patch sides are in full-resolution pixels: 64 detector pixels = 128 / factor
        assert feats["patch_sizes"].min() == pytest.approx(128 / factor)
        # the first grid cell's centre, pixel 19 of the detector's input, in full resolution
        assert kp.min() >= (19 + 0.5) * 2 / factor - 1e-3
    with pytest.raises(ConfigError):
        MultiscaleKPConf(min_size=3000)


@pytest.mark.slow
def test_patches_training_evaluation_and_reconstruction(cli, rendered_scene, tmp_path):
    """build-patches on a SIFT model of a rendered scene, a few training steps (resumed),
    evaluate patches and reconstruct --features multiscale-kp with the shipped weights."""
    scene_dir, _ = rendered_scene
    images = scene_dir / "images"
    sift_out = tmp_path / "sift"
    r = cli("reconstruct", images, "-o", sift_out, "--features", "sift")
    assert r.exit_code == 0, r.output
    patches = tmp_path / "patches.h5"
    r = cli("build-patches", sift_out / "sfm", images, "-o", patches)
    assert r.exit_code == 0, r.output
    pset = read_patches(patches)
    pos, neg, jit = pset.positives, pset.negatives, pset.jittered
    assert len(pos["track"]) > 200 and len(neg["image"]) > 100 and len(jit["image"]) > 100
    assert set(np.unique(pos["size"])) <= set(PATCH_SIZES)
    # views of one point look alike, much more than views of two different points
    rows = np.flatnonzero(pos["size"] == 64)
    patch = pset.patches[64][pos["index"][rows]].astype(np.float32)
    same, other = [], []
    for t in np.unique(pos["track"][rows])[:80]:
        k = np.flatnonzero(pos["track"][rows] == t)
        if len(k) >= 2:
            same.append(np.abs(patch[k[0]] - patch[k[1]]).mean())
            other.append(np.abs(patch[k[0]] - patch[(k[0] + 37) % len(rows)]).mean())
    assert np.median(same) < 0.6 * np.median(other)
    # negatives keep their distance from every reconstructed keypoint of their image
    rec = pycolmap.Reconstruction(sift_out / "sfm")
    by_name = {im.name: im for im in rec.images.values()}
    for k in range(0, len(neg["image"]), 50):
        image = by_name[pset.images[neg["image"][k]]]
        kps = np.array([p.xy for p in image.points2D if p.has_point3D()])
        assert np.linalg.norm(kps - neg["xy"][k], axis=1).min() >= 0.25 * neg["size"][k] - 1e-3
    # jittered copies: the stored offset points from the patch centre to the keypoint
    src = jit["source"]
    assert np.allclose(jit["xy"] + jit["offset"], pos["xy"][src], atol=1e-3)

    models = tmp_path / "models"
    det, desc = models / "det.pt", models / "desc.pt"
    r = cli("train", "keypoints", patches, "-o", det, "--steps", "3", "--batch", "8")
    assert r.exit_code == 0, r.output
    r = cli("train", "descriptor", patches, "-o", desc, "--steps", "2", "--batch", "8")
    assert r.exit_code == 0, r.output
    r = cli("train", "descriptor", patches, "-o", desc, "--steps", "4", "--batch", "8")
    assert r.exit_code == 0, r.output
    history = json.loads(desc.with_suffix(".json").read_text())
    assert history["steps_done"] == 4 and len(history["history"]) == 4  # resumed, not restarted
    r = cli("train", "descriptor", patches, "-o", desc, "--steps", "2", "--batch", "8")
    assert r.exit_code == 2 and "past --steps" in r.output

    ev = tmp_path / "eval"
    models_args = ["--descriptor", "default", "--descriptor", "random"]
    models_args += ["--detector", "default", "--detector", det]
    r = cli("evaluate", "patches", patches, "-o", ev, "--queries", "40", "--candidates", "20", *models_args)
    assert r.exit_code == 0, r.output
    res = json.loads((ev / "results.json").read_text())["files"][str(patches)]
    shipped = res["retrieval"]["multiscale-kp descriptor (default)"]
    assert shipped["top1"] >= res["retrieval"]["multiscale-kp descriptor (random)"]["top1"]
    assert res["retrieval"]["SIFT (upright, OpenCV)"]["top5"] > 0.5
    assert res["detector"]["multiscale-kp detector (default)"]["pr_auc"] > res["detector"]["chance"]["pr_auc"]

    out = tmp_path / "mkp"
    r = cli("reconstruct", images, "-o", out, "--features", "multiscale-kp")
    assert r.exit_code == 0, r.output
    assert pycolmap.Reconstruction(out / "sfm").num_reg_images() >= 6
    with h5py.File(out / "features-multiscale-kp.h5") as f:
        item = f[sorted(f.keys())[0]]
        assert item["descriptors"].shape[0] == 256
        assert item["keypoints"].shape[0] == item["scales"].shape[0] > 100
    report = json.loads((out / "report.json").read_text())["reconstruct"]
    assert report["config"]["matcher"]["name"] == "mnn"


def test_build_patches_errors(cli, tmp_path):
    r = cli("build-patches", tmp_path / "nope", tmp_path, "-o", tmp_path / "p.h5")
    assert r.exit_code == 2 and "nope" in r.output
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    r = cli("train", "descriptor", bad, "-o", tmp_path / "d.pt")
    assert r.exit_code == 2 and "bad.h5" in r.output
