"""GetNet (issue 16): the spatial transformer starts at the identity, alternating training
freezes what it says, the network learns the digits protocol, pair sets from rendered labels,
the commands and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sfmkit.eval.pairs import evaluate_model, roc_auc
from sfmkit.io.pairsets import KINDS, read_pair_set, write_pair_set
from sfmkit.models.getnet import GetNet, arch_from, load_getnet, regions, to_input
from sfmkit.synth.digits import digits_pair_set
from sfmkit.train.pair_verify import (
    TrainPairConf,
    best_threshold,
    pair_distances,
    phase_at,
    train_pair_verify,
)


@pytest.fixture(scope="module")
def digit_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("digits")
    train, test = folder / "train.h5", folder / "test.h5"
    write_pair_set(train, digits_pair_set(1500, seed=1), {}, "digits")
    write_pair_set(test, digits_pair_set(400, seed=1, split="test"), {}, "digits")
    return train, test


def test_transformer_starts_at_identity_and_crops_the_whole_image():
    net = GetNet(arch_from("digits", crop=60)).eval()
    images = digits_pair_set(2, seed=0).images
    a, b = to_input(images[0::2]), to_input(images[1::2])
    ta, tb = net.transforms(a, b)
    assert torch.equal(ta, torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3))
    assert torch.equal(tb, ta)
    assert torch.allclose(net.crop(a, ta), a, atol=1e-5)  # identity window = the image itself
    assert np.allclose(regions(ta), [[0, 0, 1, 1]] * 2)


def test_regions_follow_the_affine_window():
    # x_in = s * x_out + t: s = 0.5, t_x = 0.5 covers normalised x in [0, 1] = the right half
    assert np.allclose(regions(np.array([[0.5, 0.5, 0.0]])), [[0.5, 0.25, 1.0, 0.75]])
    assert np.allclose(regions(np.array([[1.5, 0.0, 0.0]])), [[0, 0, 1, 1]])  # clipped


def test_phases_alternate_whole_network_first():
    conf = TrainPairConf(alternate=3)
    assert [phase_at(k, conf) for k in range(8)] == ["all"] * 3 + ["stn"] * 3 + ["all"] * 2
    assert {phase_at(k, TrainPairConf(alternate=0)) for k in range(10)} == {"all"}
    assert {phase_at(k, TrainPairConf(stn=False)) for k in range(500)} == {"all"}


def _parts(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Siamese and localisation entries of the float32 state a training checkpoint holds."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["net"]
    return (
        {k: v for k, v in state.items() if k.startswith("siamese.")},
        {k: v for k, v in state.items() if k.startswith("localisation.")},
    )


def test_alternating_training_freezes_the_siamese_network(digit_sets, tmp_path):
    """Steps 0-1 train everything, steps 2-3 the transformer alone: across the frozen phase
    (a resumed run) every Siamese parameter and batch-norm statistic is unchanged, while the
    transformer moves; across a whole-network phase both change."""
    train = tmp_path / "small.h5"
    write_pair_set(train, digits_pair_set(64, seed=2), {}, "digits")
    out = tmp_path / "g.pt"
    base = {"arch": "digits", "alternate": 2, "batch": 8, "checkpoint_every": 1, "lr": 1e-2}
    train_pair_verify([train], out, TrainPairConf(steps=2, **base), device="cpu")
    s2, l2 = _parts(out.with_suffix(".ckpt"))
    train_pair_verify([train], out, TrainPairConf(steps=4, **base), device="cpu")
    s4, l4 = _parts(out.with_suffix(".ckpt"))
    train_pair_verify([train], out, TrainPairConf(steps=6, **base), device="cpu")
    s6, _ = _parts(out.with_suffix(".ckpt"))
    assert all(torch.equal(s2[k], s4[k]) for k in s2), "the frozen phase changed the Siamese network"
    assert any(not torch.equal(l2[k], l4[k]) for k in l2), "the transformer did not train"
    assert any(not torch.equal(s4[k], s6[k]) for k in s4), "the whole-network phase left the Siamese alone"


@pytest.mark.slow
def test_getnet_learns_the_digits_protocol(digit_sets, tmp_path):
    """Loss falls, the windows move onto the glyphs of held-out pairs, and the decisions beat chance."""
    train, test = digit_sets
    out = tmp_path / "getnet.pt"
    conf = TrainPairConf(arch="digits", alternate=100, steps=300, batch=32, lr=2e-3)
    card = train_pair_verify([train], out, conf, device="cpu")
    assert card["loss_last_50"] < 0.8 * card["loss_first_50"]
    net, card = load_getnet(out)
    data = read_pair_set(test)
    d = pair_distances(net, data, np.arange(len(data)))
    accuracy = ((d < card["threshold"]) == data.same.astype(bool)).mean()
    assert accuracy > 0.7, accuracy  # held-out fonts; chance is 0.5
    assert roc_auc(-d, data.same) > 0.75
    result = evaluate_model(out, data)
    assert result["region_iou"] > result["whole_image_iou"] + 0.2, result


def test_threshold_and_auc_helpers():
    d = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    same = np.array([1, 1, 1, 0, 0, 0])
    t, acc = best_threshold(d, same)
    assert 0.3 < t < 0.9 and acc == 1.0
    assert roc_auc(-d, same) == 1.0 and roc_auc(d, same) == 0.0
    assert roc_auc(np.zeros(6), same) == 0.5
    # ties: no threshold separates equal distances, so the cut goes around the tied run
    t, acc = best_threshold(np.array([0.1, 0.5, 0.5, 0.9]), np.array([1, 1, 0, 0]))
    assert acc == 0.75 and ((np.array([0.1, 0.5, 0.5, 0.9]) < t) == [1, 1, 0, 0]).mean() == acc


def test_scene_pair_set_from_rendered_labels(cli, tmp_path):
    scenes = []
    for seed in (0, 1):
        scene = tmp_path / f"scene{seed}"
        r = cli("synth", scene, "-n", "6", "--size", "160x120", "--points", "4000", "--seed", seed)
        assert r.exit_code == 0, r.output
        r = cli("build-gl3d-labels", scene / "model", "--mesh", scene / "mesh.ply", "--plot-pairs", 0)
        assert r.exit_code == 0, r.output
        scenes.append(scene / "labels.h5")
    r = cli("build-pair-set", *scenes, "-o", tmp_path / "pairs.h5", "--size", 64)
    assert r.exit_code == 0, r.output
    data = read_pair_set(tmp_path / "pairs.h5")
    assert data.images.shape[1:] == (3, 64, 64) and len(data) >= 4
    assert data.same.sum() * 2 == len(data)  # balanced
    pos = data.same.astype(bool)
    assert np.isin(data.kind[pos], [KINDS["strong"], KINDS["weak"]]).all()
    assert not np.isnan(data.region[pos]).any() and np.isnan(data.region[~pos]).all()
    box = data.region[pos]
    assert ((box[..., 2] > box[..., 0]) & (box[..., 3] > box[..., 1])).all()
    other = data.group[data.pairs[data.kind == KINDS["negative-other"]]]
    assert (other[:, 0] != other[:, 1]).all()


def test_pair_verify_filter_and_evaluate_commands(cli, digit_sets, tmp_path):
    """The commands end to end on a tiny model, with their files; and their clear errors."""
    train, test = digit_sets
    model = tmp_path / "m.pt"
    r = cli("train", "pair-verify", train, "-o", model, "--arch", "digits", "--steps", 3, "--batch", 4)
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "pairs", test, "--model", model, "-o", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(results["summary"]) == {"getnet"} and 0 <= results["models"][0]["accuracy"] <= 1

    from PIL import Image

    data = read_pair_set(test)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(4):
        Image.fromarray(data.images[k, 0]).resize((120, 90)).save(folder / f"{k}.png")
    r = cli("pair-verify", folder / "0.png", folder / "1.png", "--model", model, "-o", tmp_path / "pv")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "pv" / "pair.json").read_text())
    assert set(result) >= {"score", "same", "region_a", "region_b"}
    assert 0 <= result["region_a"][0] < result["region_a"][2] <= 120
    assert (tmp_path / "pv" / "pair.png").stat().st_size > 1000

    (folder / "pairs.txt").write_text("0.png 1.png\n0.png 2.png\n2.png 3.png\n")
    r = cli("filter-pairs", folder / "pairs.txt", folder, "--model", model, "-o", tmp_path / "fp")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "fp" / "pair-filter-getnet.json").read_text())
    assert record["kept"] + record["dropped"] == 3 and len(record["pairs"]) == 3
    # the same model, pairs and threshold: the record is reused (not rewritten)
    stamp = (tmp_path / "fp" / "pair-filter-getnet.json").stat().st_mtime_ns
    r = cli("filter-pairs", folder / "pairs.txt", folder, "--model", model, "-o", tmp_path / "fp")
    assert r.exit_code == 0 and (tmp_path / "fp" / "pair-filter-getnet.json").stat().st_mtime_ns == stamp
    # a model whose threshold no distance is below drops every pair: a clear error, not an empty file
    payload = torch.load(model, weights_only=True)
    payload["card"]["threshold"] = -1.0
    torch.save(payload, tmp_path / "never.pt")
    r = cli(
        "filter-pairs", folder / "pairs.txt", folder, "--model", tmp_path / "never.pt", "-o", tmp_path / "f2"
    )
    assert r.exit_code == 2 and "dropped all 3 pairs" in r.output
    assert not (tmp_path / "f2" / "pairs-filtered-getnet.txt").exists()

    # bad inputs: a missing image, a file that is not an image, a bad threshold, not a pair set
    r = cli("pair-verify", folder / "0.png", folder / "nope.png", "--model", model, "-o", tmp_path / "e1")
    assert r.exit_code == 2 and "nope.png" in r.output
    (folder / "bad.jpg").write_bytes(b"not an image")
    r = cli("pair-verify", folder / "0.png", folder / "bad.jpg", "--model", model, "-o", tmp_path / "e2")
    assert r.exit_code == 2 and "bad.jpg" in r.output
    r = cli("filter-pairs", folder / "pairs.txt", folder, "--model", model, "--filter", "getnet:1.5")
    assert r.exit_code == 2 and "threshold" in r.output
    r = cli("train", "pair-verify", folder / "pairs.txt", "-o", tmp_path / "x.pt")
    assert r.exit_code == 2 and "pair set" in r.output
    r = cli("evaluate", "pairs", test, "--model", folder / "0.png", "-o", tmp_path / "e3")
    assert r.exit_code == 2 and "0.png" in r.output


def test_reconstruct_refuses_a_bad_pair_filter_before_any_stage(cli, image_folder, tmp_path):
    out = tmp_path / "out"
    r = cli("reconstruct", image_folder, "-o", out, "--pair-filter", "bogus")
    assert r.exit_code == 2 and "pair filter" in r.output
    r = cli("reconstruct", image_folder, "-o", out, "--pair-filter", "getnet:2")
    assert r.exit_code == 2 and "threshold" in r.output
    missing = tmp_path / "none.pt"
    r = cli("reconstruct", image_folder, "-o", out, "--pair-filter", "getnet", "--pair-filter-model", missing)
    assert r.exit_code == 2 and "none.pt" in r.output
    r = cli("reconstruct", image_folder, "-o", out, "--pair-filter-model", missing)
    assert r.exit_code == 2 and "--pair-filter" in r.output
    assert not list(out.glob("features-*.h5")) if out.exists() else True


def test_the_shipped_model_verifies_a_pair_without_model_option(cli, image_folder, tmp_path):
    from sfmkit.retrieval.pair_filter import SHIPPED_GETNET

    net, card = load_getnet(SHIPPED_GETNET)
    assert net.conf.stn and net.conf.channels == 3 and "command" in card and card["threshold"] > 0
    assert SHIPPED_GETNET.stat().st_size < 5e6
    r = cli("pair-verify", image_folder / "im0.jpg", image_folder / "im1.jpg", "-o", tmp_path / "pv")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "pv" / "pair.json").read_text())
    assert 0 < result["score"] < 1 and len(result["region_a"]) == 4
