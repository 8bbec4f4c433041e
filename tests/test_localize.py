"""FTFY (close-up localisation): networks, the YOLO-v1 loss, localisation sets, training and the
whole-image search, on procedural textures the project draws itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.localize import read_localize_set
from sfmkit.localize.samples import BANDS, LocalizeSetConf, build_localize_set, iou_of_shift
from sfmkit.localize.search import LocalizeConf, box_iou_np, localize, tile_starts
from sfmkit.models.ftfy import (
    FTFYArch,
    FTFYNet,
    TripletNet,
    decode,
    load_network,
    save_network,
    softmax_loss,
    to_input,
    yolo_loss,
)
from sfmkit.synth.meshes import noise_texture

#: A network small enough to train in seconds.
TINY = FTFYArch(
    extractor=(4, 8, 8, 8, 8, 16, 8, 16, 16, 16, 16, 32, 32), n_filters=16, head=(32, 16, 16, 16, 16, 16)
)


@pytest.fixture(scope="module")
def texture_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(noise_texture(rng, 768)).save(folder / f"t{i}.png")
    return folder


@pytest.fixture(scope="module")
def localize_set(texture_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("set") / "set.h5"
    build_localize_set(texture_folder, out, LocalizeSetConf(factors=(1, 2), groups_per_factor=2, repeats=1))
    return out


def test_network_output_shapes_follow_the_source_size() -> None:
    net = FTFYNet(TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 128, 128), torch.zeros(2, 3, 256, 256))
        wide = net(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 256, 512))
        emb = TripletNet(TINY).eval()(torch.rand(3, 3, 128, 128))
    assert out.shape == (2, 16, 16, 2, 5) and wide.shape == (1, 16, 32, 2, 5)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 250, 256))
    with pytest.raises(ConfigError, match="13 extractor"):
        FTFYArch(extractor=(8,) * 12)


def _perfect(box: torch.Tensor, cells: int = 16) -> torch.Tensor:
    """A prediction with one predictor exactly on ``box`` (confidence 1) and no other."""
    pred = torch.zeros(1, cells, cells, 2, 5)
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    col, row = int(cx * cells), int(cy * cells)
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    pred[0, row, col, 1] = torch.tensor([1.0, cx * cells - col, cy * cells - row, w**0.5, h**0.5])
    return pred


def test_yolo_loss_is_zero_on_the_true_box_and_grows_off_it() -> None:
    box = torch.tensor([[0.30, 0.40, 0.55, 0.62]])
    loss, parts = yolo_loss(_perfect(box[0]), box)
    assert float(loss) < 1e-6 and parts["iou"] == pytest.approx(1.0, abs=1e-5)
    shifted = _perfect(box[0] + torch.tensor([0.05, 0, 0.05, 0]))
    worse, worse_parts = yolo_loss(shifted, box)
    assert float(worse) > 0.01 and worse_parts["iou"] < 0.9
    spurious = _perfect(box[0]).clone()
    spurious[0, 0, 0, 0, 0] = 1.0  # a confident predictor where there is no box
    assert float(yolo_loss(spurious, box)[0]) == pytest.approx(0.5, abs=1e-5)
    boxes, conf = decode(_perfect(box[0])[0], 1)
    np.testing.assert_allclose(boxes[0], box[0].numpy(), atol=1e-6)
    assert conf[0] == pytest.approx(1.0)


def test_localize_set_holds_consistent_boxes(localize_set: Path, texture_folder: Path) -> None:
    s = read_localize_set(localize_set)
    assert len(s) == 2 * 2 * 2 * (1 + len(BANDS)) and s.sources.shape[1:] == (256, 256, 3)
    assert set(s.groups["factor"].tolist()) == {1, 2}
    box, full, band = s.samples["box"], s.samples["box_full"], s.samples["band"]
    assert box.min() >= 0 and box.max() <= 1
    # the box in the tile maps to the recorded full-resolution box through the tile's window
    window = s.groups["window"][s.samples["group"]]
    side = window[:, 2:3] - window[:, 0:1]
    np.testing.assert_allclose(window[:, [0, 1, 0, 1]] + box * side, full, atol=0.5)
    # shifted copies have the IoU of their band with their group's key box
    for rows in np.split(np.arange(len(s)), len(s.groups["factor"])):
        key = full[rows[0]]
        assert band[rows[0]] == 0
        for r in rows[1:]:
            lo, hi = BANDS[band[r] - 1]
            assert lo - 0.02 <= float(box_iou_np(full[r], key)) < hi + 0.02
    # a target is its full-resolution box, resized
    name = s.images[s.groups["image"][s.samples["group"][3]]]
    image = Image.open(texture_folder / name).convert("RGB")
    crop = np.asarray(
        image.resize((128, 128), Image.Resampling.LANCZOS, box=tuple(full[3].tolist())), np.float32
    )
    assert np.abs(crop - s.targets[3].astype(np.float32)).mean() < 2.0
    assert iou_of_shift(10, 0, 0) == 1.0 and iou_of_shift(10, 10, 0) == 0.0


def _top1_iou(net: FTFYNet, data: object, rows: np.ndarray) -> float:
    s = data
    with torch.no_grad():
        pred = net(to_input(s.targets[rows]), to_input(s.source_of(rows)))  # type: ignore[attr-defined]
    ious = [
        float(box_iou_np(decode(p, 1)[0][0], s.samples["box"][r])) for p, r in zip(pred, rows, strict=True)
    ]  # type: ignore[attr-defined]
    return float(np.mean(ious))


def test_softmax_loss_picks_the_responsible_predictor_or_the_background() -> None:
    box = torch.tensor([[0.30, 0.40, 0.55, 0.62]])
    logits = torch.logit(_perfect(box[0]).clamp(1e-4, 1 - 1e-4))
    logits[..., 0] = -20.0
    right = logits.clone()
    right[0, int(0.51 * 16), int(0.425 * 16), 1, 0] = 10.0  # the responsible cell and predictor
    wrong = logits.clone()
    wrong[0, 2, 2, 0, 0] = 10.0
    loss_right, parts = softmax_loss(right, box)
    loss_wrong, _ = softmax_loss(wrong, box)
    assert parts["iou"] == pytest.approx(1.0, abs=1e-3) and float(loss_right) < 0.01 < float(loss_wrong)
    # a source without the target: the background logit (0) should win
    absent = torch.tensor([False])
    assert float(softmax_loss(logits, box, absent)[0]) < 0.01 < float(softmax_loss(right, box, absent)[0])


@pytest.mark.parametrize("loss_name", ["yolo", "softmax"])
def test_ftfy_learns_a_synthetic_case(localize_set: Path, loss_name: str) -> None:
    """On a few samples the loss falls and the best box moves onto the truth."""
    torch.manual_seed(0)
    s = read_localize_set(localize_set)
    rows = np.arange(0, len(s), 4)[:6]
    net = FTFYNet(TINY)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    target, source = to_input(s.targets[rows]), to_input(s.source_of(rows))
    boxes = torch.from_numpy(s.samples["box"][rows])
    net.eval()
    before_iou = _top1_iou(net, s, rows)
    net.train()
    losses = []
    for _ in range(120):
        if loss_name == "yolo":
            loss, _ = yolo_loss(net(target, source), boxes)
        else:
            loss, _ = softmax_loss(net.logits(net.filters(target), net.extractor(source)), boxes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    net.eval()
    after_iou = _top1_iou(net, s, rows)
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    assert after_iou > 0.5 and after_iou > before_iou + 0.3


def test_model_files_round_trip_and_refuse_the_wrong_kind(tmp_path: Path) -> None:
    net = FTFYNet(TINY).eval()
    path = save_network(tmp_path / "f.pt", "ftfy", net, {"what": "test"})
    loaded, card = load_network("ftfy", path)
    x, y = torch.rand(1, 3, 128, 128) - 0.5, torch.rand(1, 3, 256, 256) - 0.5
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x, y).numpy(), net(x, y).numpy(), atol=5e-3)
    assert card["what"] == "test"
    with pytest.raises(SfmkitError, match="not an sfmkit triplet"):
        load_network("triplet", path)
    with pytest.raises(SfmkitError, match="train localize"):
        load_network("ftfy", tmp_path / "missing.pt")


def test_tiles_cover_the_image_and_boxes_map_to_source_pixels(texture_folder: Path) -> None:
    assert tile_starts(100, 40, 20) == [0, 20, 40, 60] and tile_starts(100, 40, 25) == [0, 25, 50, 60]
    assert tile_starts(30, 40, 20) == [0]
    source = np.asarray(Image.open(texture_folder / "t0.png").convert("RGB"))
    found = localize(
        FTFYNet(TINY).eval(), source[100:228, 200:328], source, LocalizeConf(factors=(1, 2), top_k=3)
    )
    assert 1 <= len(found.boxes) <= 3 and found.tiles >= 2
    assert (
        found.boxes.min() >= 0 and found.boxes[:, [0, 2]].max() <= 768 and found.boxes[:, [1, 3]].max() <= 768
    )
    assert np.all(np.diff(found.confidence) <= 0)
    with pytest.raises(SfmkitError, match="larger than the source"):
        localize(FTFYNet(TINY).eval(), source, source[:100, :100])


def test_commands_train_and_localize_end_to_end(
    cli, localize_set: Path, texture_folder: Path, tmp_path: Path
) -> None:
    tri, ftfy = tmp_path / "tri.pt", tmp_path / "ftfy.pt"
    r = cli("train", "localize-triplet", localize_set, "-o", tri, "--steps", "2", "--batch", "4")
    assert r.exit_code == 0, r.output
    r = cli(
        "train", "localize", localize_set, "--init", tri, "-o", ftfy, "--steps", "2", "--batch", "2",
        "--head-steps", "3", "--head-batch", "4",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    card = json.loads(ftfy.with_suffix(".json").read_text())
    assert card["steps_done"] == 2 and card["init"] == str(tri) and "train localize" in card["command"]
    assert (tmp_path / "ftfy-head.ckpt").is_file()
    r = cli("train", "localize", localize_set, "-o", tmp_path / "f2.pt", "--steps", "1", "--head-steps", "2")
    assert r.exit_code != 0 and "--init" in r.output
    query = tmp_path / "q.png"
    Image.open(texture_folder / "t1.png").crop((300, 200, 460, 360)).save(query)
    out = tmp_path / "loc"
    r = cli("localize", query, texture_folder / "t1.png", "--model", ftfy, "--factors", "1 2", "-o", out)
    assert r.exit_code == 0, r.output
    boxes = json.loads((out / "boxes.json").read_text())["boxes"]
    assert len(boxes) == 5 and {"x0", "y0", "x1", "y1", "confidence"} <= set(boxes[0])
    assert (out / "boxes.png").is_file() and (out / "report.json").is_file()


def test_bad_inputs_give_clear_errors(cli, localize_set: Path, texture_folder: Path, tmp_path: Path) -> None:
    source = texture_folder / "t0.png"
    r = cli("localize", source, source, "--model", tmp_path / "none.pt", "--factors", "0 2")
    assert r.exit_code != 0 and "--factors" in r.output
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    model = save_network(tmp_path / "m.pt", "ftfy", FTFYNet(TINY), {})
    r = cli("localize", broken, source, "--model", model)
    assert r.exit_code != 0 and "broken.jpg" in r.output
    big = tmp_path / "big.png"
    Image.new("RGB", (900, 900)).save(big)
    r = cli("localize", big, source, "--model", model)
    assert r.exit_code != 0 and "larger than the source" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("build-localize-set", empty, "-o", tmp_path / "s.h5")
    assert r.exit_code != 0 and "no images" in r.output
    r = cli("build-localize-set", texture_folder, "-o", tmp_path / "s.h5", "--factors", "40")
    assert r.exit_code != 0 and "no patch group fits" in r.output
    r = cli("train", "localize", tmp_path / "missing.h5", "-o", tmp_path / "x.pt", "--steps", "1")
    assert r.exit_code != 0 and "build-localize-set" in r.output


def test_evaluate_localize_scores_every_method_per_factor(
    cli, localize_set: Path, texture_folder: Path, tmp_path: Path
) -> None:
    """The whole-image protocol on a tiny set: per-factor rows for every method, and NCC (the
    close-up is cut from the searched image itself) finds the key boxes."""
    ftfy = save_network(tmp_path / "f.pt", "ftfy", FTFYNet(TINY), {})
    tri = save_network(tmp_path / "t.pt", "triplet", TripletNet(TINY), {})
    out = tmp_path / "eval"
    r = cli(
        "evaluate", "localize", localize_set, "--model", ftfy, "--triplet", tri, "-o", out, "--device", "cpu"
    )
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())["methods"]
    assert set(results) == {"ftfy", "triplet", "ncc"}
    assert set(results["ncc"]["per_factor"]) == {"1", "2"} and results["ncc"]["all"]["queries"] == 8
    assert results["ncc"]["all"]["top1"] == 1.0
    assert (
        (out / "results.md").is_file() and (out / "report.json").is_file() and (out / "results.png").is_file()
    )


@pytest.fixture(scope="module")
def rendered_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sfmkit.pipelines.synth import SynthConf, synthesize

    out = tmp_path_factory.mktemp("scene")
    synthesize(
        SynthConf(
            scene="facade", n_images=4, size=(640, 480), seed=5, depth=True, points=2000, image_format="png"
        ),
        out,
    )
    return out


def test_cross_view_boxes_are_the_reprojection_of_the_close_up(rendered_scene: Path, tmp_path: Path) -> None:
    from sfmkit.localize.crossview import CrossViewConf, build_cross_view_set, load_views

    out = tmp_path / "xv.h5"
    counts = build_cross_view_set(
        rendered_scene, out, CrossViewConf(factors=(1, 2), queries_per_pair=5, seed=1)
    )
    s = read_localize_set(out)
    assert counts["samples"] == len(s) >= 10
    views = {v.name: v for v in load_views(rendered_scene)}
    for row in range(len(s)):
        wide = views[s.images[int(s.groups["image"][row])]]
        close_row, query, scale = s.query_of(row)
        close = views[s.images[close_row]]
        assert close is not wide
        # the close-up's centre, lifted with its own depth, lands inside the box in the wide view
        centre = close.lift(((query[:2] + query[2:]) / 2)[None])
        uv, seen = wide.sees(centre)
        box = s.samples["box_full"][row]
        if seen[0]:
            assert box[0] - 1 <= uv[0, 0] <= box[2] + 1 and box[1] - 1 <= uv[0, 1] <= box[3] + 1
        side = np.sqrt(np.prod(box[2:] - box[:2])) / s.groups["factor"][row]
        assert scale == pytest.approx((query[2] - query[0]) / side, rel=1e-3)
        frac = s.samples["box"][row]
        window = s.groups["window"][row]
        np.testing.assert_allclose(window[:2] + frac[:2] * (window[2] - window[0]), box[:2], atol=0.6 * 2)


def test_evaluate_localize_reads_cross_view_queries(cli, rendered_scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "xv.h5"
    r = cli(
        "build-localize-set", rendered_scene, "--cross-view", "-o", out, "--factors", "1 2", "--groups", "2"
    )
    assert r.exit_code == 0, r.output
    r = cli("evaluate", "localize", out, "-o", tmp_path / "eval", "--max-queries", "6")
    assert r.exit_code == 0, r.output
    ncc = json.loads((tmp_path / "eval" / "results.json").read_text())["methods"]["ncc"]["all"]
    assert ncc["queries"] == 6
    r = cli("build-localize-set", tmp_path, "--cross-view", "-o", tmp_path / "x.h5")
    assert r.exit_code != 0 and "gt_dense_cameras" in r.output


def test_neighbour_view_geometry_is_exact_on_a_plane() -> None:
    """The plane-fit transfer of the Strecha neighbouring-view sets: on exact projections of a
    plane, epipolar distances vanish, triangulation and the RANSAC plane recover the points,
    and the transfer maps pixels where the true projection does."""
    from sfmkit.eval.localize_views import fit_plane, plane_transfer, projection, triangulate
    from sfmkit.eval.matches import fundamental, sampson_errors
    from sfmkit.io.strecha import StrechaCamera

    k = np.array([[1500.0, 0, 960], [0, 1500, 640], [0, 0, 1]])

    def camera(centre: np.ndarray, yaw: float) -> StrechaCamera:
        c, s = np.cos(yaw), np.sin(yaw)
        return StrechaCamera(
            K=k, R_c2w=np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]), C=centre, size=(1920, 1280)
        )

    a, b = camera(np.array([0.0, 0, 0]), 0.0), camera(np.array([1.0, 0.1, 0.2]), -0.15)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-2, 2, 60), rng.uniform(-1.5, 1.5, 60), np.zeros(60)])
    points[:, 2] = 8.0 + 0.2 * points[:, 0]  # the plane z = 8 + 0.2 x
    points[:10, 2] += 1.0  # outliers off the plane

    def project(cam: StrechaCamera, xyz: np.ndarray) -> np.ndarray:
        h = np.column_stack([xyz, np.ones(len(xyz))]) @ projection(cam).T
        return h[:, :2] / h[:, 2:]

    xa, xb = project(a, points), project(b, points)
    assert sampson_errors(fundamental(a, b), xa, xb).max() < 1e-6
    assert sampson_errors(fundamental(a, b), xa, xb + [0, 3]).min() > 0.5
    np.testing.assert_allclose(triangulate(projection(a), projection(b), xa, xb), points, atol=1e-6)
    normal, offset, inliers = fit_plane(points, 0.01, rng)
    assert inliers[10:].all() and not inliers[:10].any()
    uv, front = plane_transfer(xa[10:], a, b, normal, offset)
    assert front.all()
    np.testing.assert_allclose(uv, xb[10:], atol=1e-4)
