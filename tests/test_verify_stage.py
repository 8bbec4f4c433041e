import numpy as np

from sfmkit.geometry.verify import VerifyConf, pair_seed, select_best_pairs, verify
from sfmkit.io.h5 import H5Reader, ItemWriter
from sfmkit.io.matches import inlier_counts, read_verified
from sfmkit.io.pairs import write_pairs


def test_best_pairs_keeps_each_images_strongest():
    counts = {("a", "b"): 100, ("a", "c"): 50, ("a", "d"): 10, ("b", "c"): 5, ("c", "d"): 0}
    keep = select_best_pairs(counts, 1)
    # a's best is a-b, b's best is a-b, c's best is a-c, d's best is a-d (c-d has no inliers)
    assert keep == {("a", "b"), ("a", "c"), ("a", "d")}
    assert select_best_pairs(counts, 10) == {p for p, c in counts.items() if c > 0}


def test_pair_seed_depends_only_on_the_pair():
    a = np.random.default_rng(pair_seed(0, ("x", "y"))).integers(0, 1 << 30)
    b = np.random.default_rng(pair_seed(0, ("x", "y"))).integers(0, 1 << 30)
    c = np.random.default_rng(pair_seed(1, ("x", "y"))).integers(0, 1 << 30)
    assert a == b != c


def _planar_pair_files(tmp_path):
    """Features and matches for 3 images related by homographies, plus random outliers."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 800, (300, 2)).astype(np.float32)
    shifts = {"a.jpg": (0, 0), "b.jpg": (30, -10), "c.jpg": (-20, 15)}
    feats = tmp_path / "features.h5"
    with ItemWriter(feats, "features", "{}") as w:
        for name, (dx, dy) in shifts.items():
            w.write((name,), {"keypoints": base + np.array([dx, dy], np.float32)})
    matches = tmp_path / "matches.h5"
    with ItemWriter(matches, "matches", "{}", depth=2, extra_attrs={"features": str(feats)}) as w:
        for n0, n1 in [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("c.jpg", "b.jpg")]:
            m0 = np.arange(300, dtype=np.int32)
            m0[:60] = rng.permutation(60)  # 60 scrambled: outliers (except fixed points)
            w.write((n0, n1), {"matches0": m0, "matching_scores0": np.ones(300, np.float16)})
    pairs = write_pairs(tmp_path / "pairs.txt", [("a.jpg", "b.jpg"), ("c.jpg", "a.jpg"), ("c.jpg", "b.jpg")])
    return feats, matches, pairs


def test_verify_stage_reads_pairs_in_either_order_and_resumes(tmp_path):
    feats, matches, pairs = _planar_pair_files(tmp_path)
    out = verify(VerifyConf(), matches, pairs, tmp_path)
    counts = inlier_counts(out, [("a.jpg", "b.jpg"), ("c.jpg", "a.jpg")])
    assert all(240 <= c <= 300 for c in counts.values())
    with H5Reader(out) as r:
        forward = read_verified(r, ("a.jpg", "c.jpg"))
        backward = read_verified(r, ("c.jpg", "a.jpg"))
        np.testing.assert_array_equal(forward, backward[:, ::-1])
        assert np.all(forward[:, 0] == forward[:, 1])  # identity correspondences survive
    again = verify(VerifyConf(), matches, pairs, tmp_path)
    from sfmkit.io.h5 import json_attr

    assert json_attr(again, "last_run")["computed"] == 0


def test_best_pairs_marks_unselected_pairs(tmp_path):
    feats, matches, pairs = _planar_pair_files(tmp_path)
    out = verify(VerifyConf(best_pairs=1), matches, pairs, tmp_path)
    with H5Reader(out) as r:
        selected = [
            read_verified(r, p) is not None
            for p in [("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("c.jpg", "b.jpg")]
        ]
    assert 1 <= sum(selected) < 3
