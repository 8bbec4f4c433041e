import numpy as np
import pytest

from sfmkit.features.relocalize import cells_to_pixels, child_offsets, relocalize


def test_child_offsets_k2_are_the_four_children():
    assert sorted(map(tuple, child_offsets(2))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(ValueError):
        child_offsets(1)


def test_relocalisation_follows_planted_maxima_down_three_levels():
    rng = np.random.default_rng(0)
    grid = (3, 4)
    shapes = [(6, 8), (12, 16), (24, 32)]  # pool2, pool1, conv1_2 below a pool3 grid
    norms = [rng.random(s) * 0.1 for s in shapes]
    expected = []
    for r in range(grid[0]):
        for c in range(grid[1]):
            # plant a path: each level picks a child chosen at random, with a large norm
            rr, cc = r, c
            for norm in norms:
                dr, dc = rng.integers(0, 2, 2)
                rr, cc = 2 * rr + dr, 2 * cc + dc
                norm[rr, cc] = 1.0 + rng.random()
            expected.append((rr, cc))
    cells = relocalize(norms, grid)
    assert cells.shape == (12, 2)
    assert [tuple(x) for x in cells] == expected


def test_relocalisation_ignores_maxima_outside_the_children():
    norm = np.zeros((4, 4))
    norm[0, 2] = 5.0  # child of cell (0, 1), not of (0, 0)
    norm[1, 1] = 1.0
    cells = relocalize([norm], (2, 2))
    assert tuple(cells[0]) == (1, 1)
    assert tuple(cells[1]) == (0, 2)


def test_pixel_convention_and_scale():
    cells = np.array([[0, 0], [2, 5]])
    xy = cells_to_pixels(cells, (3.0, 2.0))
    np.testing.assert_allclose(xy, [[1.5, 1.0], [16.5, 5.0]])


def test_subpixel_refinement_finds_a_sampled_parabola_peak():
    from sfmkit.features.relocalize import refine_subpixel

    yy, xx = np.mgrid[0:20, 0:30].astype(float)
    peak = (7.3, 12.8)  # (row, col)
    norm = 10 - (yy - peak[0]) ** 2 - (xx - peak[1]) ** 2
    refined = refine_subpixel(norm, np.array([[7, 13]]))
    np.testing.assert_allclose(refined[0], peak, atol=1e-6)
    # not a maximum along columns (monotonic): no column shift; offsets never exceed half a pixel
    ramp = xx.copy()
    refined = refine_subpixel(ramp, np.array([[5, 5], [0, 0]]))
    np.testing.assert_allclose(refined, [[5, 5], [0, 0]])
