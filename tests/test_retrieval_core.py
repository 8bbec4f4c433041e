"""Retrieval building blocks: R-MAC regions, MAC / R-MAC / masked MAC / PR-MAC, PCA whitening,
faiss indexes, query expansion and mAP@k, against brute-force NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfmkit.errors import SfmkitError
from sfmkit.models.whitening import Whitening
from sfmkit.retrieval.aggregation import mac, masked_mac, prmac_distances, regional_mac, rmac, rmac_regions
from sfmkit.retrieval.index import build_index, recall_at_k, weighted_query_expansion
from sfmkit.retrieval.metrics import average_precision_at_k, mean_average_precision
from sfmkit.retrieval.whitening import learn_whitening


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + spread * rng.normal(size=(n, dim))
    return _unit(x).astype(np.float32)


# ---------------------------------------------------------------- regions


@pytest.mark.parametrize("side", [7, 13, 28, 37])
def test_square_maps_get_35_regions(side):
    assert len(rmac_regions(side, side)) == 35
    assert len(rmac_regions(side, side, levels=1)) == 1


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 7), (7, 3), (28, 28), (30, 41), (60, 17)])
def test_regions_are_valid_and_inside(shape):
    h, w = shape
    r = rmac_regions(h, w)
    assert r.ndim == 2 and r.shape[1] == 4 and r.dtype == np.int64 and len(r) >= 35
    assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all() and (r[:, 2] <= h).all() and (r[:, 3] <= w).all()
    assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
    assert np.array_equal(r[:, 2] - r[:, 0], r[:, 3] - r[:, 1])  # square
    # level 0 is one L x L square per position along the longer side, starting at the corner
    assert r[0].tolist() == [0, 0, min(h, w), min(h, w)]
    # the regions reach the far edges
    assert r[:, 2].max() == h and r[:, 3].max() == w


def test_level_one_regions_overlap_by_half():
    r = rmac_regions(28, 28)
    level1 = r[1:10]
    assert (level1[:, 2] - level1[:, 0] == 14).all()
    starts = sorted({int(x) for x in level1[:, 1]})
    assert starts == [0, 7, 14]
    # neighbours overlap by half their side
    assert all((b - a) / 14 == pytest.approx(0.5) for a, b in zip(starts, starts[1:], strict=False))
    # the longer side keeps the step at most half the side
    wide = rmac_regions(20, 50)
    side = wide[1:, 2] - wide[1:, 0]
    for s in np.unique(side):
        xs = np.unique(wide[1:][side == s][:, 1])
        assert np.diff(xs).max() <= np.ceil(s / 2)


def test_bad_region_arguments():
    with pytest.raises(SfmkitError, match="1 x 1"):
        rmac_regions(0, 5)
    with pytest.raises(SfmkitError, match="level"):
        rmac_regions(5, 5, levels=0)
    with pytest.raises(SfmkitError, match="outside"):
        regional_mac(torch.rand(1, 4, 5, 5), np.array([[0, 0, 6, 6]]))


# ---------------------------------------------------------------- pooling


def test_mac_regional_rmac_match_numpy():
    gen = torch.Generator().manual_seed(0)
    fmap = torch.relu(torch.randn(2, 16, 9, 13, generator=gen))
    x = fmap.numpy()
    regions = rmac_regions(9, 13)

    out = mac(fmap).numpy()
    assert np.allclose(out, _unit(x.max(axis=(2, 3))), atol=1e-6)

    reg = regional_mac(fmap, regions).numpy()
    expected = np.stack([x[:, :, y0:y1, x0:x1].max(axis=(2, 3)) for y0, x0, y1, x1 in regions], axis=1)
    assert reg.shape == (2, len(regions), 16)
    assert np.allclose(reg, _unit(expected), atol=1e-6)

    out = rmac(fmap).numpy()
    assert np.allclose(out, _unit(_unit(expected).sum(axis=1)), atol=1e-6)
    for v in (mac(fmap), rmac(fmap), regional_mac(fmap, regions)):
        assert torch.allclose(v.norm(dim=-1), torch.ones(()), atol=1e-5)
    with pytest.raises(SfmkitError, match=r"\(B, D, H, W\)"):
        mac(fmap[0])


def test_masked_mac_is_the_max_inside_the_mask_with_gradients_only_there():
    gen = torch.Generator().manual_seed(1)
    fmap = torch.randn(2, 8, 6, 6, generator=gen).requires_grad_(True)  # signs mixed on purpose
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[0, 1:4, 2:5] = True
    # mask 1 stays empty: global max
    out = masked_mac(fmap, mask)
    x = fmap.detach().numpy()
    inside = x[0][:, mask[0].numpy()]
    assert np.allclose(out[0].detach().numpy(), _unit(inside.max(axis=1)), atol=1e-6)
    assert np.allclose(out[1].detach().numpy(), _unit(x[1].max(axis=(1, 2))), atol=1e-6)

    out.sum().backward()
    grad = fmap.grad.numpy()
    expected = np.zeros_like(grad, dtype=bool)
    cells = np.argwhere(mask[0].numpy())
    for d in range(8):
        y, xx = cells[np.argmax(x[0, d][mask[0].numpy()])]
        expected[0, d, y, xx] = True
        y, xx = np.unravel_index(np.argmax(x[1, d]), (6, 6))
        expected[1, d, y, xx] = True
    assert np.array_equal(grad != 0, expected)


def test_masked_mac_resizes_the_mask():
    gen = torch.Generator().manual_seed(2)
    fmap = torch.rand(1, 4, 8, 8, generator=gen)
    low = torch.zeros(1, 4, 4)
    low[0, 0, 0] = 1.0  # float mask at half resolution: the top-left 2 x 2 cells
    out = masked_mac(fmap, low)
    assert torch.allclose(out[0], torch.nn.functional.normalize(fmap[0, :, :2, :2].amax(dim=(1, 2)), dim=0))
    with pytest.raises(SfmkitError, match="masks"):
        masked_mac(fmap, low[0])


def test_prmac_distances_match_brute_force():
    rng = np.random.default_rng(3)
    query = _unit(rng.normal(size=(7, 12))).astype(np.float32)
    db = [_unit(rng.normal(size=(int(r), 12))).astype(np.float32) for r in rng.integers(1, 9, size=6)]
    db.insert(2, np.zeros((0, 12), np.float32))  # an image without regions
    expected = [
        sum(min(np.linalg.norm(q - r) for r in regions) for q in query) if len(regions) else np.inf
        for regions in db
    ]
    got = prmac_distances(query, db)
    assert got.shape == (7,) and np.allclose(got, expected, atol=1e-4)
    # padded form
    padded = np.zeros((7, 8, 12), np.float32)
    for i, regions in enumerate(db):
        padded[i, : len(regions)] = regions
    got_padded = prmac_distances(query, padded, counts=[len(r) for r in db])
    assert np.allclose(got_padded, expected, atol=1e-4)
    # the image itself is at distance ~0
    assert prmac_distances(db[0], [db[0], db[1]])[0] == pytest.approx(0.0, abs=1e-2)
    with pytest.raises(SfmkitError, match="12-dimensional"):
        prmac_distances(query, [rng.normal(size=(3, 5))])


def test_prmac_blocks_give_the_same_result(monkeypatch):
    import sfmkit.retrieval.aggregation as aggregation

    rng = np.random.default_rng(4)
    query = _unit(rng.normal(size=(5, 8)))
    db = [_unit(rng.normal(size=(int(r), 8))) for r in rng.integers(0, 6, size=40)]
    whole = prmac_distances(query, db)
    monkeypatch.setattr(aggregation, "PRMAC_BLOCK", 12)
    assert np.allclose(prmac_distances(query, db), whole)


# ---------------------------------------------------------------- whitening


def test_whitening_gives_identity_covariance_and_round_trips(tmp_path):
    rng = np.random.default_rng(5)
    mixing = rng.normal(size=(10, 10)) * np.linspace(0.1, 3.0, 10)
    x = rng.normal(size=(2000, 10)) @ mixing + 4.0
    white = learn_whitening(x, dim=6)
    assert white.projection.shape == (6, 10) and white.out_dim == 6 and white.in_dim == 10
    y = white.apply(x, normalize=False)
    assert np.allclose(np.cov(y, rowvar=False), np.eye(6), atol=1e-4)
    assert np.allclose(y.mean(axis=0), 0.0, atol=1e-6)
    # normalised rows, torch too
    z = white.apply(x.astype(np.float32))
    assert z.dtype == np.float32 and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    zt = white.apply(torch.from_numpy(x.astype(np.float32)))
    assert isinstance(zt, torch.Tensor) and np.allclose(zt.numpy(), z, atol=1e-4)

    loaded = Whitening.load(white.save(tmp_path / "w.npz"))
    assert np.array_equal(loaded.mean, white.mean) and np.array_equal(loaded.projection, white.projection)
    with pytest.raises(SfmkitError, match="takes 10-dimensional vectors but got 7-dimensional"):
        white.apply(np.zeros((3, 7)))
    with pytest.raises(SfmkitError, match="does not exist"):
        Whitening.load(tmp_path / "missing.npz")
    with pytest.raises(SfmkitError, match="4-dimensional"):
        Whitening(np.zeros(4), np.zeros((2, 5)))


def test_whitening_keeps_fewer_dimensions_with_a_warning(caplog):
    x = np.random.default_rng(6).normal(size=(5, 16))
    with caplog.at_level("WARNING"):
        white = learn_whitening(x, dim=8)
    assert white.out_dim == 4 and "keeps 4 dimensions" in caplog.text


# ---------------------------------------------------------------- indexes


def test_flat_index_is_exact_and_clips_k():
    rng = np.random.default_rng(7)
    db = _unit(rng.normal(size=(300, 16)))  # float64, converted
    queries = _unit(rng.normal(size=(20, 16)))
    index = build_index(db, "flat")
    assert index.kind == "flat" and index.ntotal == 300
    scores, ids = index.search(queries, 5, chunk=7)
    sims = queries @ db.T
    assert np.array_equal(ids, np.argsort(-sims, axis=1)[:, :5])
    assert np.allclose(scores, np.take_along_axis(sims, ids, axis=1), atol=1e-5)
    assert scores.dtype == np.float32 and ids.dtype == np.int64

    small = build_index(db[:3], "flat")
    scores, ids = small.search(queries, 10)
    assert ids.shape == (20, 3) and (np.sort(ids, axis=1) == [0, 1, 2]).all()
    with pytest.raises(SfmkitError, match="16-dimensional"):
        index.search(queries[:, :8], 3)
    with pytest.raises(SfmkitError, match="unknown index kind"):
        build_index(db, "lsh")


@pytest.fixture(scope="module")
def clustered_db():
    rng = np.random.default_rng(8)
    db = _clustered(20_000, 64, 400, rng, spread=1.0)
    picks = rng.choice(len(db), 300, replace=False)
    queries = _unit(db[picks] + 0.05 * rng.normal(size=(300, 64))).astype(np.float32)
    _, exact = build_index(db, "flat").search(queries, 10)
    return db, queries, exact


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall(clustered_db, kind):
    db, queries, exact = clustered_db
    index = build_index(db, kind)
    assert index.kind == kind and index.ntotal == len(db)
    _, ids = index.search(queries, 10)
    recall = recall_at_k(ids, exact, 10)
    assert recall > 0.8, f"{kind} recall@10 = {recall:.3f}"
    if kind == "ivf":  # nprobe is applied: one cell per query finds fewer
        index.nprobe = 1
        assert recall_at_k(index.search(queries, 10)[1], exact, 10) < recall


def test_auto_picks_flat_then_ivf():
    db = _clustered(2000, 8, 20, np.random.default_rng(9))
    assert build_index(db, "auto", auto_threshold=5000).kind == "flat"
    index = build_index(db, "auto", auto_threshold=1000)
    assert index.kind == "ivf" and index.index.nlist == 2000 // 39
    index.nprobe = 1000  # every cell: exact
    _, ids = index.search(db[:50], 5)
    _, exact = build_index(db, "flat").search(db[:50], 5)
    assert recall_at_k(ids, exact, 5) == pytest.approx(1.0)


def test_recall_at_k():
    exact = np.array([[1, 2, 3], [4, 5, -1]])
    approx = np.array([[3, 9, 1], [5, 8, 7]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_query_expansion_moves_towards_neighbours():
    rng = np.random.default_rng(10)
    db = _unit(rng.normal(size=(50, 8))).astype(np.float32)
    q = _unit(db[:1] + 0.8 * rng.normal(size=(1, 8))).astype(np.float32)
    scores, ids = build_index(db, "flat").search(q, 3)
    expanded = weighted_query_expansion(q, db, ids, scores, alpha=3.0)
    assert np.allclose(np.linalg.norm(expanded, axis=1), 1.0, atol=1e-6)
    centre = _unit(db[ids[0]].mean(axis=0))
    assert expanded[0] @ centre > q[0] @ centre
    # by hand: weights max(sim, 0)^alpha
    w = np.maximum(scores[0], 0) ** 3.0
    assert np.allclose(expanded[0], _unit(q[0] + (w[:, None] * db[ids[0]]).sum(axis=0)), atol=1e-5)
    # negative similarities and missing neighbours weigh nothing
    same = weighted_query_expansion(q, db, np.array([[-1, 4]]), np.array([[0.9, -0.5]]))
    assert np.allclose(same, q, atol=1e-6)


# ---------------------------------------------------------------- mAP


def test_average_precision_by_hand():
    ranked = np.array([True, False, True, False, False])
    assert average_precision_at_k(ranked, 2, 5) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision_at_k(ranked, 4, 5) == pytest.approx((1 + 2 / 3) / 4)
    assert average_precision_at_k(ranked, 2, 1) == pytest.approx(1.0)  # min(n_relevant, k) = 1
    assert average_precision_at_k(np.zeros(5, bool), 0, 5) == 0.0
    with pytest.raises(SfmkitError, match="n_relevant"):
        average_precision_at_k(ranked, 1, 5)


def test_mean_average_precision_skips_queries_without_relevant_items():
    rankings = np.array([[1, 7, 3, 8, 9], [2, 4, 6, -1, -1], [5, 1, 2, 3, 4]])
    relevant = [{1, 3}, {6, 0}, set()]
    value, used = mean_average_precision(rankings, relevant, 5)
    ap0, ap1 = (1 + 2 / 3) / 2, (1 / 3) / 2
    assert used == 2 and value == pytest.approx((ap0 + ap1) / 2)
    matrix = np.zeros((3, 10), bool)
    for i, rel in enumerate(relevant):
        matrix[i, list(rel)] = True
    result = mean_average_precision(rankings, matrix, 5)
    assert result.queries == 2 and result.value == pytest.approx(value)
    value, used = mean_average_precision(rankings[2:], [set()], 5)
    assert used == 0 and np.isnan(value)


def test_retrieval_pairs_spec_is_not_confused_with_a_pairs_file(tmp_path, monkeypatch):
    from sfmkit.errors import SfmkitError
    from sfmkit.io.pairs import parse_pairs_spec

    assert parse_pairs_spec("retrieval", retrieval=True).n == 10
    assert parse_pairs_spec("retrieval:5", retrieval=True).n == 5
    monkeypatch.chdir(tmp_path)
    for name in ("retrieval.txt", "retrieval_pairs.txt"):
        (tmp_path / name).write_text("a.jpg b.jpg\n")
        assert parse_pairs_spec(name, retrieval=True).kind == "file"
    assert parse_pairs_spec("exhaustive", retrieval=True).kind == "exhaustive"
    for bad in ("retrieval:0", "retrieval:x", "missing.txt"):
        with pytest.raises(SfmkitError):
            parse_pairs_spec(bad, retrieval=True)
    with pytest.raises(SfmkitError, match="sfmkit retrieve"):
        parse_pairs_spec("retrieval:5")


def test_index_moves_to_a_gpu_only_when_faiss_sees_one(clustered_db, monkeypatch):
    """The GPU wiring, with faiss's GPU calls stood in for (no GPU on the test machines): flat and
    IVF move to the asked device, HNSW, ``cpu`` and an absent device stay, results unchanged."""
    import faiss

    db, queries, exact = clustered_db
    moved: list[int] = []

    class Space:
        def set_index_parameter(self, index, name, value):
            setattr(index, name, value)

    def cpu_to_gpu(resources, gpu, index):
        moved.append(gpu)
        return index

    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", Space, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    flat, ivf = build_index(db, "flat"), build_index(db, "ivf", device="cuda:0")
    assert (flat.gpu, ivf.gpu, moved) == (0, 0, [0, 0]) and ivf.resources is not None
    assert np.array_equal(flat.search(queries, 10)[1], exact)
    ivf.nprobe = 1  # applied through the GPU parameter space
    ivf.search(queries, 10)
    assert ivf.index.nprobe == 1
    for kind, device in (("hnsw", "auto"), ("flat", "cpu"), ("flat", "cuda:1")):
        assert build_index(db, kind, device=device).gpu is None
    monkeypatch.delattr(faiss, "StandardGpuResources")  # the CPU build
    assert build_index(db, "flat", device="cuda").gpu is None
    assert moved == [0, 0]


def test_pair_whitening_keeps_what_tells_places_apart():
    from sfmkit.retrieval.whitening import learn_pair_whitening

    rng = np.random.default_rng(0)
    places = rng.normal(size=60)
    # two views per place: places differ along axis 0; views of one place differ (more) along axis 1
    views = []
    for u in places:
        for _ in range(2):
            views.append([u, 3.0 * rng.normal(), 0.1 * rng.normal()])
    x = np.asarray(views)
    pairs = np.arange(len(x)).reshape(-1, 2)
    pca = learn_whitening(x, dim=1)
    learned = learn_pair_whitening(x, pairs, dim=1, shrink=0.0)
    axis = lambda w: np.abs(w.projection[0]) / np.linalg.norm(w.projection[0])  # noqa: E731
    assert axis(pca)[1] > 0.9  # PCA follows the largest spread: the view changes
    assert axis(learned)[0] > 0.9  # the pair whitening follows the places
    # nearest neighbours after whitening find the other view of the same place
    y = learned.apply(x, normalize=False)[:, 0]
    other = np.abs(y[:, None] - y[None, :]) + np.eye(len(y)) * 1e9
    assert (other.argmin(axis=1) // 2 == np.arange(len(y)) // 2).mean() > 0.6
    # spread vectors (regional ones in training) choose the kept directions and the mean
    spread = rng.normal(size=(500, 3)) * [0.1, 0.1, 5.0] + 2.0
    kept = learn_pair_whitening(x, pairs, dim=1, spread=spread)
    assert axis(kept)[2] > 0.9 and axis(learn_pair_whitening(x, pairs, dim=1))[0] > 0.9
    assert np.allclose(kept.mean, spread.mean(axis=0))
    with pytest.raises(SfmkitError):
        learn_pair_whitening(x, pairs, dim=1, spread=spread[:, :2])
    with pytest.raises(SfmkitError):
        learn_pair_whitening(x, np.array([[0, len(x)]]), dim=1)
    with pytest.raises(SfmkitError):
        learn_pair_whitening(x, pairs, dim=4)
