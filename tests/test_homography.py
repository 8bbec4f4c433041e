import numpy as np
import pytest

from sfmkit.geometry.homography import dlt, homography_4pt, symmetric_errors
from sfmkit.geometry.multi_homography import RansacParams, multi_homography_ransac

H_A = np.array([[1.05, 0.02, 40.0], [-0.03, 0.98, -15.0], [2e-5, -1e-5, 1.0]])
H_B = np.array([[0.9, -0.1, 300.0], [0.05, 1.1, 80.0], [-4e-5, 3e-5, 1.0]])


def apply(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.c_[p, np.ones(len(p))] @ h.T
    return q[:, :2] / q[:, 2:]


def normalized(h: np.ndarray) -> np.ndarray:
    return h / h[2, 2]


def test_minimal_and_least_squares_solvers_are_exact_on_clean_data():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 1000, (10, 4, 2))
    dst = np.stack([apply(H_A, s) for s in src])
    for solver in (homography_4pt, dlt):
        for h in solver(src, dst):
            np.testing.assert_allclose(normalized(h), H_A, rtol=1e-6, atol=1e-8)
    many = rng.uniform(0, 1000, (1, 50, 2))
    np.testing.assert_allclose(normalized(dlt(many, apply(H_A, many[0])[None])[0]), H_A, rtol=1e-6, atol=1e-8)


def test_degenerate_sample_scores_no_inliers():
    src = np.array([[[0, 0], [1, 1], [2, 2], [5, 0]]], float)  # three collinear points
    dst = src + 3
    h = homography_4pt(src, dst)
    pts = np.random.default_rng(0).uniform(0, 100, (20, 2))
    err = symmetric_errors(h, pts, pts + 3)
    assert abs(np.linalg.det(h[0])) < 1e-9
    assert (err < 10.0**2).sum() < 5


def two_planes(seed: int, n_a: int = 300, n_b: int = 200, n_out: int = 250, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    pa = rng.uniform(0, 1000, (n_a, 2))
    pb = rng.uniform(0, 1000, (n_b, 2))
    po = rng.uniform(0, 1000, (n_out, 2))
    p0 = np.concatenate([pa, pb, po])
    p1 = np.concatenate([apply(H_A, pa), apply(H_B, pb), rng.uniform(0, 1000, (n_out, 2))]) + rng.normal(
        0, noise, (len(p0), 2)
    )
    labels = np.r_[np.zeros(n_a), np.ones(n_b), -np.ones(n_out)]
    return p0, p1, labels


def test_multi_homography_finds_both_planes_and_rejects_outliers():
    p0, p1, labels = two_planes(1)
    result = multi_homography_ransac(p0, p1, RansacParams(threshold=10.0), seed=0)
    assert len(result.homographies) >= 2
    found = result.inliers
    # (almost) every plane point is kept, (almost) no outlier is
    assert np.isin(np.flatnonzero(labels >= 0), found).mean() > 0.98
    assert np.isin(np.flatnonzero(labels < 0), found).mean() < 0.05
    # the first two homographies are the two planes (larger first)
    first = found[result.labels == 0]
    second = found[result.labels == 1]
    assert (labels[first] == 0).mean() > 0.95 and (labels[second] == 1).mean() > 0.95
    np.testing.assert_allclose(normalized(result.homographies[0]), H_A, rtol=0.05, atol=0.5)
    np.testing.assert_allclose(normalized(result.homographies[1]), H_B, rtol=0.05, atol=0.5)


def test_multi_homography_is_deterministic_for_a_seed():
    p0, p1, _ = two_planes(2)
    a = multi_homography_ransac(p0, p1, RansacParams(), seed=7)
    b = multi_homography_ransac(p0, p1, RansacParams(), seed=7)
    assert np.array_equal(a.inliers, b.inliers) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("n", [0, 3, 20])
def test_too_few_matches_give_no_homography(n):
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 100, (n, 2))
    result = multi_homography_ransac(p, p + 1, RansacParams(min_inliers=25), seed=0)
    assert len(result.inliers) == 0 and result.homographies.shape == (0, 3, 3)


def test_stops_when_the_best_homography_is_too_small():
    p0, p1, labels = two_planes(3, n_a=300, n_b=20, n_out=100)
    result = multi_homography_ransac(p0, p1, RansacParams(min_inliers=25), seed=0)
    assert len(result.homographies) == 1
    assert np.all(labels[result.inliers] == 0)
