"""Retrieval stages: the mask triplet loss, search over a global file, retrieve / train /
evaluate commands on tiny rendered scenes, model files, reconstruct --pairs retrieval:K."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sfmkit.io.h5 import ItemWriter
from sfmkit.io.pairs import read_pairs
from sfmkit.models.retrieval import load_retrieval_model
from sfmkit.models.weights import load_vgg16
from sfmkit.retrieval.loss import MaskTripletConf, batched_mask_triplet_loss
from sfmkit.retrieval.search import SearchConf, search


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_mask_triplet_loss_terms():
    conf = MaskTripletConf()
    eye = torch.eye(8)
    # three columns; anchor == strong == weak within a column, columns orthogonal
    a = eye[:3]
    loss, parts = batched_mask_triplet_loss(a, a.clone(), a.clone(), a.clone(), a.clone(), conf)
    # d(a,p) = 0, nearest negative sqrt(2): easy = [0 + 1 - 1.414]+ = 0, weak = 0,
    # hard = [0 + 0.5 - 0]+ = 0.5 (weak as close as strong), mask = 0
    assert parts["easy"] == 0 and parts["weak"] == 0 and parts["mask"] == 0
    assert loss.item() == pytest.approx(conf.lam * conf.lambda2 * conf.margin_hard)
    # a negative closer than the positive raises the easy term; masked distance above beta counts
    p = _unit(a + 0.9 * eye[[1, 2, 0]])  # each strong positive leans towards another column
    w = _unit(a + 2.0 * eye[3:6])
    loss2, parts2 = batched_mask_triplet_loss(a, p, w, a, p, conf)
    assert parts2["easy"] > 0 and parts2["mask"] > 0 and loss2 > loss
    # gradients flow to every input
    x = a.clone().requires_grad_(True)
    batched_mask_triplet_loss(x, p, w, x, p, conf)[0].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        batched_mask_triplet_loss(a[:1], a[:1], a[:1], a[:1], a[:1], conf)


def test_same_scene_negatives_join_the_nearest_negative_pool():
    conf = MaskTripletConf()
    eye = torch.eye(8)
    a = eye[:3]
    p = _unit(a + 0.2 * eye[3:6])
    w = _unit(a + 0.6 * eye[5:8])
    base, parts = batched_mask_triplet_loss(a, p, w, a, p, conf)
    # a negative far from every column changes nothing
    far = _unit(-torch.ones(1, 8))
    same, same_parts = batched_mask_triplet_loss(a, p, w, a, p, conf, far)
    assert same.item() == pytest.approx(base.item()) and same_parts["d_neg"] == pytest.approx(parts["d_neg"])
    # one close to the first anchor (a same-scene view that looks alike) is its nearest negative
    near = _unit(a[:1] + 0.3 * eye[7:8])
    loss, near_parts = batched_mask_triplet_loss(a, p, w, a, p, conf, near)
    assert near_parts["d_neg"] < parts["d_neg"] and loss > base


def _global_file(path, regional: dict[str, np.ndarray]) -> None:
    with ItemWriter(path, "global", "{}") as writer:
        for name, r in regional.items():
            mac_vec = r.max(axis=0)
            writer.write(
                (name,),
                {
                    "global_descriptor": (mac_vec / np.linalg.norm(mac_vec)).astype(np.float32),
                    "regional": r.astype(np.float16),
                    "image_size": np.array([64, 48], np.int32),
                },
            )


def test_search_ranks_by_prmac_and_excludes_self(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(size=(4, 32)))
    regional = {}
    for i in range(24):
        r = np.abs(centres[i % 4] + 0.3 * rng.normal(size=(5 + i % 3, 32)))
        regional[f"img{i:02d}.jpg"] = r / np.linalg.norm(r, axis=1, keepdims=True)
    _global_file(tmp_path / "global.h5", regional)
    for aggregation in ("mac", "rmac", "prmac"):
        conf = SearchConf(aggregation=aggregation, top_k=5, whitening="none", shortlist=23)
        found = search(tmp_path / "global.h5", conf, workdir=tmp_path)
        names = found.database
        for q, row in zip(found.queries, found.ids, strict=True):
            hits = [names[j] for j in row]
            assert q not in hits
            # the 5 nearest of a cluster of 6 are its other members
            assert all(int(h[3:5]) % 4 == int(q[3:5]) % 4 for h in hits), (aggregation, q, hits)
        if aggregation == "prmac":
            # the ranking equals the brute-force PR-MAC distance (regions stored as float16)
            q = names[0]
            qr = regional[q].astype(np.float16).astype(np.float32)
            dist = {
                n: sum(
                    np.min(np.linalg.norm(r.astype(np.float16).astype(np.float32) - v, axis=1)) for v in qr
                )
                for n, r in regional.items()
                if n != q
            }
            expected = sorted(dist, key=dist.get)[:5]
            assert [names[j] for j in found.ids[0]] == expected
            np.testing.assert_allclose(-found.scores[0], [dist[n] for n in expected], rtol=1e-3)
    assert not list(tmp_path.glob(".regions-*"))  # the temporary region file is removed
    pairs = found.pairs()
    assert len(pairs) == len({frozenset(p) for p in pairs}) and all(a != b for a, b in pairs)


def test_search_learns_a_database_whitening(tmp_path):
    rng = np.random.default_rng(1)
    regional = {f"{i}.jpg": np.abs(rng.normal(size=(35, 64))) for i in range(12)}
    _global_file(tmp_path / "g.h5", regional)
    found = search(tmp_path / "g.h5", SearchConf(aggregation="rmac", top_k=3, whitening="database", dim=16))
    assert "database" in found.whitening and found.ids.shape == (12, 3)
    # a model without a whitening searches unwhitened: no silent fallback to the database PCA
    plain = search(tmp_path / "g.h5", SearchConf(aggregation="rmac", top_k=3, whitening="model"))
    unwhitened = search(tmp_path / "g.h5", SearchConf(aggregation="rmac", top_k=3, whitening="none"))
    assert plain.whitening.startswith("none") and np.array_equal(plain.ids, unwhitened.ids)


@pytest.fixture(scope="module")
def tiny_scenes(cli, tmp_path_factory):
    """Two rendered scenes of 6 images with GL3D labels next to their images."""
    root = tmp_path_factory.mktemp("scenes")
    for kind, seed in (("orbit", 1), ("facade", 3)):
        out = root / kind
        args = ["synth", str(out), "--scene", kind, "-n", "8", "--size", "128x96"]
        assert cli(*args, "--seed", str(seed)).exit_code == 0
        r = cli(
            "build-gl3d-labels",
            str(out / "model"),
            "--mesh",
            str(out / "mesh.ply"),
            "-o",
            str(out / "labels.h5"),
        )
        assert r.exit_code == 0, r.output
    return root


def test_retrieve_command_writes_global_file_and_pairs(cli, tiny_scenes, tmp_path):
    images = tiny_scenes / "orbit" / "images"
    args = ["retrieve", str(images), "-o", str(tmp_path), "-k", "2", "--model", "random"]
    r = cli(*args, "--size", "96", "--whitening", "none")
    assert r.exit_code == 0, r.output
    pairs = read_pairs(tmp_path / "pairs-retrieval-prmac-k2.txt")
    assert 6 <= len(pairs) <= 12
    import h5py

    with h5py.File(next(tmp_path.glob("global-*.h5"))) as f:
        item = f["0000.jpg"]
        assert item["global_descriptor"].shape == (512,) and item["regional"].shape[1] == 512
        assert np.linalg.norm(item["global_descriptor"][()]) == pytest.approx(1.0, abs=1e-4)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["retrieve"]["counts"]["pairs"] == len(pairs)


def test_train_resume_and_evaluate_retrieval(cli, tiny_scenes, tmp_path):
    labels = [str(tiny_scenes / k / "labels.h5") for k in ("orbit", "facade")]
    model = tmp_path / "m.pt"
    base = ["train", "retrieval", "--labels", *labels, "-o", str(model)]
    opts = ["--size", "96", "--base", "random", "--columns", "2", "--jitter-copies", "0"]
    r = cli(*base, *opts, "--steps", "3")
    assert r.exit_code == 0, r.output
    loaded = load_retrieval_model(str(model))
    assert loaded.whitening is not None and loaded.card["trained_layers"] == ["conv5_3"]
    assert "train retrieval" in loaded.card["command"]
    fresh = load_vgg16("random", conv5=True)
    assert not torch.equal(loaded.trunk.convs["conv5_3"].weight, fresh.convs["conv5_3"].weight)
    assert torch.equal(loaded.trunk.convs["conv5_2"].weight, fresh.convs["conv5_2"].weight)
    assert model.stat().st_size < 6e6  # only conv5_3 (float16) and the whitening are stored
    first = json.loads(model.with_suffix(".json").read_text())["history"]
    # resume: the checkpoint at step 3 is reused, two more steps run
    r = cli(*base, *opts, "--steps", "5")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output
    history = json.loads(model.with_suffix(".json").read_text())["history"]
    assert len(history) == 5 and history[:3] == first

    out = tmp_path / "eval"
    args = ["evaluate", "retrieval", "--labels", *labels, "-o", str(out), "--size", "96"]
    r = cli(*args, "--model", "random", "--model", str(model), "--k", "5")
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 16 and len(results["methods"]) == 6
    for m in results["methods"]:
        assert 0.0 <= m["mAP@5"] <= 100.0


def test_loop_whitening_changes_what_training_optimises(cli, tiny_scenes, tmp_path):
    labels = [str(tiny_scenes / k / "labels.h5") for k in ("orbit", "facade")]
    opts = ["--size", "96", "--base", "random", "--columns", "2", "--jitter-copies", "0", "--steps", "2"]
    weights = {}
    for extra in ([], ["--loop-whitening", "--whitening", "pairs"]):
        model = tmp_path / f"m{len(extra)}.pt"
        r = cli("train", "retrieval", "--labels", *labels, "-o", str(model), *opts, *extra)
        assert r.exit_code == 0, r.output
        loaded = load_retrieval_model(str(model))
        assert loaded.card["conf"]["loop_whitening"] == bool(extra)
        weights[bool(extra)] = loaded.trunk.convs["conv5_3"].weight
    # same seed, same batches: only the whitened loss can make the updates differ
    assert not torch.equal(weights[False], weights[True])


def test_train_validates_and_caches_frozen_features(cli, tiny_scenes, tmp_path, monkeypatch):
    import sfmkit.train.retrieval as trainer

    labels = [str(tiny_scenes / k / "labels.h5") for k in ("orbit", "facade")]
    model = tmp_path / "m.pt"
    cache = tmp_path / "cache"
    opts = ["--size", "96", "--base", "random", "--columns", "2", "--jitter-copies", "1", "--steps", "3"]
    val = ["--val-labels", labels[0], "--val-labels", labels[1], "--val-every", "2", "--cache", str(cache)]
    r = cli("train", "retrieval", "--labels", *labels, "-o", str(model), *opts, *val)
    assert r.exit_code == 0, r.output
    rows = json.loads(model.with_suffix(".val.json").read_text())["rows"]
    assert [row["step"] for row in rows] == [0, 2, 3]
    assert all(0.0 <= row[k] <= 100.0 for row in rows for k in ("mac", "rmac", "prmac"))
    assert model.with_suffix(".val.png").stat().st_size > 0
    assert load_retrieval_model(str(model)).card["validation"]["mAP@100"] == rows
    # training scenes (original + 1 jittered copy) and validation scenes (originals) are cached
    assert len(list(cache.glob("pool4-*.pt"))) == 4

    # the final validation scores the model as 'evaluate retrieval' does (same whitening here:
    # 16 training images, all used for both)
    r = cli(
        "evaluate",
        "retrieval",
        "--labels",
        *labels,
        "-o",
        str(tmp_path / "ev"),
        "--size",
        "96",
        "--model",
        str(model),
    )
    assert r.exit_code == 0, r.output
    scores = {
        m["aggregation"]: m["mAP@100"]
        for m in json.loads((tmp_path / "ev" / "results.json").read_text())["methods"]
    }
    for key in ("mac", "rmac", "prmac"):
        assert rows[-1][key] == pytest.approx(scores[key], abs=1.0)

    # a second run, training two layers, reads the pool4 cache instead of running the backbone
    calls = []
    monkeypatch.setattr(trainer, "pool4_forward", lambda *a: calls.append(1) or None)
    second = tmp_path / "m2.pt"
    r = cli("train", "retrieval", "--labels", *labels, "-o", str(second), *opts, *val, "--train-layers", "2")
    assert r.exit_code == 0, r.output
    assert calls == [] and load_retrieval_model(str(second)).card["trained_layers"] == ["conv5_2", "conv5_3"]


def test_build_retrieval_set_resumes_and_keeps_test_seeds_out(cli, tmp_path):
    out = tmp_path / "set"
    args = ["build-retrieval-set", "-o", str(out), "--per-kind", "1", "--kinds", "orbit,facade"]
    r = cli(*args, "-n", "4", "--size", "96x72")
    assert r.exit_code == 0, r.output
    assert sorted(p.parent.name for p in out.glob("*/labels.h5")) == ["facade-1000", "orbit-1000"]
    report = json.loads((out / "report.json").read_text())["build-retrieval-set"]
    assert report["counts"] == {"scenes": 2, "rendered": 2, "reused": 0}
    r = cli(*args, "-n", "4", "--size", "96x72")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "report.json").read_text())["build-retrieval-set"]["counts"]["reused"] == 2
    r = cli(*args, "--first-seed", "21")
    assert r.exit_code == 2 and "test and validation" in r.output, r.output
    r = cli(*args, "--kinds", "castle")
    assert r.exit_code == 2 and "unknown scene kind" in r.output, r.output


def test_bad_retrieval_model_is_a_clear_error(cli, tiny_scenes, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    images = str(tiny_scenes / "orbit" / "images")
    for model, message in (
        (tmp_path / "bad.pt", "cannot read retrieval model"),
        ("nope", "unknown retrieval model"),
    ):
        r = cli("retrieve", images, "-o", str(tmp_path / "o"), "--model", str(model))
        assert r.exit_code == 2 and message in r.output, r.output
