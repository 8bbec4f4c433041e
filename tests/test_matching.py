import numpy as np
import torch

from sfmkit.matching.coarse_to_fine import coarse_to_fine, one_to_one
from sfmkit.matching.mutual_nn import mutual_nn


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def test_mutual_nn_recovers_a_permutation_with_noise():
    g = torch.Generator().manual_seed(0)
    d0 = unit(torch.randn(500, 64, generator=g))
    perm = torch.randperm(500, generator=g)
    d1 = unit(d0[perm] + 0.05 * torch.randn(500, 64, generator=g))
    i0, i1, s = mutual_nn(d0, d1)
    assert len(i0) == 500
    assert torch.equal(perm[i1], i0)
    assert (s > 0.85).all()


def test_mutual_nn_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(1)
    d0, d1 = unit(torch.randn(300, 16, generator=g)), unit(torch.randn(280, 16, generator=g))
    a = mutual_nn(d0, d1, ratio=0.95, chunk=4096)
    b = mutual_nn(d0, d1, ratio=0.95, chunk=37)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_mutual_nn_rejects_non_mutual_and_ambiguous_matches():
    d0 = unit(torch.tensor([[1.0, 0.0], [0.9, 0.1]]))
    d1 = unit(torch.tensor([[1.0, 0.01]]))
    i0, i1, _ = mutual_nn(d0, d1)
    assert i0.tolist() == [0] and i1.tolist() == [0]  # only the mutual one
    d1b = unit(torch.tensor([[1.0, 0.0], [1.0, 0.001]]))
    query = unit(torch.tensor([[1.0, 0.0005]]))  # equidistant from both candidates
    i0, _, _ = mutual_nn(query, d1b, ratio=0.8)
    assert len(i0) == 0  # two near-identical candidates fail the ratio test


def test_coarse_to_fine_matches_fine_cells_inside_coarse_matches():
    # image 1 is image 0 shifted by one coarse cell (two fine cells) to the right
    g = torch.Generator().manual_seed(2)
    hc, wc = 4, 6
    hf, wf = 2 * hc, 2 * wc
    fine0 = unit(torch.randn(hf * wf, 32, generator=g))
    coarse0 = unit(torch.randn(hc * wc, 64, generator=g))
    fine_grid0 = fine0.view(hf, wf, 32)
    fine_grid1 = torch.roll(fine_grid0, shifts=2, dims=1)
    coarse1 = torch.roll(coarse0.view(hc, wc, 64), shifts=1, dims=1).reshape(-1, 64)
    i0, i1, s = coarse_to_fine(
        coarse0, coarse1, (hc, wc), (hc, wc), fine0, fine_grid1.reshape(-1, 32), (hf, wf), (hf, wf)
    )
    assert len(i0) == hf * wf  # every fine cell (roll keeps all cells)
    r0, c0 = i0 // wf, i0 % wf
    r1, c1 = i1 // wf, i1 % wf
    assert torch.equal(r0, r1)
    assert torch.equal((c0 + 2) % wf, c1)
    assert torch.allclose(s, torch.ones_like(s))


def test_coarse_to_fine_with_radius_stays_one_to_one():
    g = torch.Generator().manual_seed(3)
    coarse = unit(torch.randn(12, 8, generator=g))
    fine = unit(torch.randn(48, 8, generator=g))
    i0, i1, _ = coarse_to_fine(coarse, coarse, (3, 4), (3, 4), fine, fine, (6, 8), (6, 8), radius=1)
    assert len(set(i0.tolist())) == len(i0) and len(set(i1.tolist())) == len(i1)
    assert torch.equal(i0, i1)


def test_coarse_to_fine_applies_the_ratio_test_to_the_coarse_matches():
    """Coarse cells 0 and 1 of image 1 are both noisy copies of cell 0 of image 0: with a
    ratio test, that cell (two similar candidates) loses its match and its fine cells."""
    g = torch.Generator().manual_seed(4)
    coarse0 = unit(torch.randn(12, 16, generator=g))
    coarse1 = coarse0.clone()
    e = 0.02 * torch.randn(1, 16, generator=g)
    coarse1[:2] = unit(torch.cat([coarse0[:1] + e, coarse0[:1] - e]))  # equally far from cell 0
    fine = unit(torch.randn(48, 8, generator=g))
    args = (coarse0, coarse1, (3, 4), (3, 4), fine, fine, (6, 8), (6, 8))
    plain, _, _ = coarse_to_fine(*args)
    strict, _, _ = coarse_to_fine(*args, ratio=0.8)
    children_of_0 = {0, 1, 8, 9}  # fine cells under coarse cell 0 (fine grid 6 x 8)
    assert children_of_0 & set(plain.tolist())
    assert not children_of_0 & set(strict.tolist())
    assert {40, 41, 46, 47} <= set(strict.tolist())  # unambiguous cells keep their matches


def test_one_to_one_keeps_the_best_of_each_index():
    idx0 = torch.tensor([0, 0, 1, 2])
    idx1 = torch.tensor([5, 6, 6, 7])
    score = torch.tensor([0.9, 0.8, 0.95, 0.5])
    keep = one_to_one(idx0, idx1, score)
    assert keep.tolist() == [True, False, True, True]


def test_pyramid_levels_match_a_close_up_at_the_right_scale(rendered_scene, tmp_path):
    """A 2x digital close-up of a view is matched at the level pair (1, 0): its half-size copy
    against the full view, with matches that land where the zoom puts them."""
    from PIL import Image

    from sfmkit.features import get_conf
    from sfmkit.features.extract import extract
    from sfmkit.io.h5 import H5Reader
    from sfmkit.matching.match import MatchConf, _DescriptorCache, choose_levels, match_pair
    from sfmkit.utils.config import replace

    scene_dir, _ = rendered_scene
    folder = tmp_path / "images"
    folder.mkdir()
    wide = Image.open(scene_dir / "images" / "0000.png").convert("RGB")
    w, h = wide.size
    wide.save(folder / "wide.png")
    box = (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)
    close = wide.crop(box).resize((w, h), Image.Resampling.BICUBIC)
    close.save(folder / "close.png")
    Image.open(scene_dir / "images" / "0001.png").convert("RGB").save(folder / "next.png")
    conf = replace(get_conf("dense-vgg16-ms"), max_size=max(w, h))
    path = extract(conf, folder, tmp_path / "out", device="cpu")
    with H5Reader(path, "features") as reader:
        offsets = reader.array(("close.png",), "pyramid/offsets")
        assert len(offsets) == 4 and offsets[1] == np.prod(reader.array(("close.png",), "grid_shape"))
        cache = _DescriptorCache(reader, True, torch.device("cpu"))
        close_d, wide_d, next_d = cache.get("close.png"), cache.get("wide.png"), cache.get("next.png")
        assert choose_levels(MatchConf(), close_d, wide_d)[0] == (1, 0)
        assert choose_levels(MatchConf(), wide_d, close_d)[0] == (0, 1)
        assert choose_levels(MatchConf(), wide_d, next_d)[0] == (0, 0)
        result = match_pair(MatchConf(), close_d, wide_d, dense=True)
        assert list(result["levels"]) == [1, 0]
        k_close = reader.array(("close.png",), "keypoints")
        k_wide = reader.array(("wide.png",), "keypoints")

    def errors(matches0: np.ndarray) -> np.ndarray:
        """Distance of each match in the wide view from where the 2x zoom puts it."""
        i0 = np.nonzero(matches0 >= 0)[0]
        return np.linalg.norm(k_wide[matches0[i0]] - (k_close[i0] / 2 + [w // 4, h // 4]), axis=1)

    i0 = np.nonzero(result["matches0"] >= 0)[0]
    assert np.all(i0 >= offsets[1]) and np.all(i0 < offsets[2])  # the half-size level of the close-up
    error = errors(result["matches0"])
    # without the pyramid, (0, 0) alone matches the 2x close-up far worse (measured: 61% vs 26% within 4 px)
    single_error = errors(match_pair(MatchConf(scale_search=False), close_d, wide_d, dense=True)["matches0"])
    assert (error < 4).sum() > 100
    assert (error < 4).sum() > (single_error < 4).sum(), ((error < 4).mean(), (single_error < 4).mean())
    assert (error < 4).mean() > 2 * (single_error < 4).mean(), ((error < 4).mean(), (single_error < 4).mean())
