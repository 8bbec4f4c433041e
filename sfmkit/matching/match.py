"""The ``match`` stage: features + pairs -> ``matches-<tag>.h5`` (resumable).

Layout per pair ``/<image0>/<image1>``: ``matches0`` (N0,) int32, the index of the matched
keypoint of image1 or -1, and ``matching_scores0`` (N0,) float16 (cosine similarity; for
LightGlue, :mod:`sfmkit.matching.lightglue`, the match probability).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.features import feature_kind
from sfmkit.geometry.multi_homography import RansacParams, ransac_homography
from sfmkit.io.h5 import H5Reader, file_reference, read_file_attrs
from sfmkit.io.matches import pair_writer, start_pair_run
from sfmkit.io.shards import prepare_shards, run_sharded
from sfmkit.matching.coarse_to_fine import coarse_to_fine
from sfmkit.matching.lightglue import LightGlueConf, LightGlueMatcher, item_cache
from sfmkit.matching.mutual_nn import mutual_nn
from sfmkit.models.peers import check_lightglue
from sfmkit.utils.cache import LRUCache
from sfmkit.utils.config import derived_path
from sfmkit.utils.device import resolve_device
from sfmkit.utils.executor import LOCAL, ExecutorConf
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchConf:
    """Matching options.

    Attributes:
        name: preset name.
        coarse_to_fine: dense features only: pool4 mutual NN, then pool3 inside each match.
        fine_radius: extra fine cells searched around the 2x2 children of a coarse match
            (1 = a 4x4 window: tolerates coarse matches that are off by part of a cell; on
            Strecha it gives about twice the verified matches and lower errors than 0).
        ratio: optional Lowe ratio (both directions); None = no ratio test. Coarse-to-fine
            matching applies it to the coarse (pool4) matches.
        min_similarity: optional lower bound on the cosine similarity of a match.
        scale_search: features with pyramid levels (``dense-vgg16-ms``): match the level
            pairs (0, 0), (0, k) and (k, 0) at the coarse level and keep the one whose coarse
            matches agree best with one homography (:func:`choose_levels`); the chosen pair
            is stored as ``levels`` (2,) int8 beside the matches.
        scale_threshold: inlier threshold of that homography, in coarse cells of the coarser
            of the two levels.
        scale_min_similarity: only coarse matches at least this similar count for the choice.
    """

    name: str = "mnn-c2f"
    coarse_to_fine: bool = True
    fine_radius: int = 1
    ratio: float | None = None
    min_similarity: float | None = None
    scale_search: bool = True
    scale_threshold: float = 1.5
    scale_min_similarity: float = 0.7

    def __post_init__(self) -> None:
        if self.fine_radius < 0:
            raise ConfigError("fine_radius must be >= 0")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError("ratio must be in (0, 1]")


AnyMatchConf = MatchConf | LightGlueConf

CONFS: dict[str, AnyMatchConf] = {
    "mnn-c2f": MatchConf(),
    "mnn": MatchConf(name="mnn", coarse_to_fine=False),
    "mnn-ratio": MatchConf(name="mnn-ratio", coarse_to_fine=False, ratio=0.8),
    "lightglue": LightGlueConf(),
}


def matches_path(conf: AnyMatchConf, features: Path, out_dir: Path) -> Path:
    return derived_path(out_dir, "matches", features, "features", conf, CONFS.get(conf.name))


@dataclass(frozen=True)
class Level:
    """One pyramid level of a dense item: its coarse descriptors (Nc, Dc) and grid shape, its
    fine grid shape and the index of its first keypoint (fine descriptor)."""

    coarse: torch.Tensor
    coarse_shape: tuple[int, int]
    fine_shape: tuple[int, int]
    offset: int


class _DescriptorCache:
    """Per-image descriptors as torch tensors, least recently used evicted past a byte budget."""

    def __init__(self, reader: H5Reader, dense: bool, device: torch.device, budget: int = 2 << 30):
        self.reader, self.dense, self.device = reader, dense, device
        self._cache: LRUCache[dict] = LRUCache(self._load, _item_bytes, budget)

    def get(self, name: str) -> dict:
        return self._cache.get(name)

    def _load(self, name: str) -> dict:
        key = (name,)
        if not self.reader.has(key):
            raise SfmkitError(f"{self.reader.path} has no features for {name}; run extract first")
        item = {"fine": self._tensor(self.reader.array(key, "descriptors"))}
        if self.dense:
            item["levels"] = self._levels(key)
            item["image_size"] = tuple(int(v) for v in self.reader.array(key, "image_size"))
        return item

    def _levels(self, key: tuple[str]) -> list[Level]:
        """The pyramid levels of a dense item (one for features without ``pyramid/``)."""
        offsets = self.reader.optional(key, "pyramid/offsets")
        offsets = [0, None] if offsets is None else [int(v) for v in offsets]
        levels = []
        for k in range(len(offsets) - 1):
            prefix = "" if k == 0 else f"pyramid/{k}/"
            levels.append(
                Level(
                    coarse=self._tensor(self.reader.array(key, f"{prefix}coarse/descriptors")),
                    coarse_shape=tuple(int(v) for v in self.reader.array(key, f"{prefix}coarse/grid_shape")),
                    fine_shape=tuple(int(v) for v in self.reader.array(key, f"{prefix}grid_shape")),
                    offset=offsets[k],
                )
            )
        return levels

    def _tensor(self, desc: np.ndarray) -> torch.Tensor:
        """(D, N) stored descriptors -> (N, D) float32 unit vectors."""
        t = torch.from_numpy(np.ascontiguousarray(desc.T)).to(self.device).float()
        return torch.nn.functional.normalize(t, dim=1)


def _item_bytes(item: dict) -> int:
    """Bytes of the tensors of a cached descriptor item."""
    size = item["fine"].numel() * item["fine"].element_size()
    return size + sum(lv.coarse.numel() * lv.coarse.element_size() for lv in item.get("levels", []))


def _cell_centres(idx: torch.Tensor, shape: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """(M, 2) centres of coarse cells ``idx`` of a ``shape`` grid, in units of the longer side of
    the full image (so that every pyramid level of an image shares one frame)."""
    h, w = shape
    rows, cols = (idx // w).cpu().numpy(), (idx % w).cpu().numpy()
    longer = max(image_size)
    return np.stack([(cols + 0.5) / w * image_size[0], (rows + 0.5) / h * image_size[1]], 1) / longer


_SCALE_RANSAC = RansacParams(threshold=1.0, max_homographies=1, min_inliers=4, max_iterations=500)


def choose_levels(
    conf: MatchConf, d0: dict, d1: dict
) -> tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """The pyramid level pair whose coarse mutual matches fit one homography best.

    Tries (0, 0), (0, k) and (k, 0) for every level k of the other image. A level pair's score
    is the number of its coarse mutual matches that are within ``conf.scale_threshold`` cells
    (of the coarser of the two grids) of the best RANSAC homography and have a cosine
    similarity of at least ``conf.scale_min_similarity``. Pool4 descriptors tolerate some
    zoom, so a 2x close-up still has many geometrically consistent matches at (0, 0), but
    with lower similarities than at the right scale; counting only confident inliers makes
    the right level pair win (measured on a 2x digital zoom and on sacre_coeur pairs with
    known relative scale).

    Returns:
        The level pair and its coarse matches (indices into the two coarse grids).
    """
    l0, l1 = d0["levels"], d1["levels"]
    combos = [(0, 0)] + [(0, k) for k in range(1, len(l1))] + [(k, 0) for k in range(1, len(l0))]
    best, best_score, best_matches = (0, 0), -1.0, None
    rng = np.random.default_rng(0)
    for k0, k1 in combos:
        a, b = l0[k0], l1[k1]
        c0, c1, sim = mutual_nn(a.coarse, b.coarse, ratio=conf.ratio)
        score = 0.0
        if len(c0) >= 4:
            p0 = _cell_centres(c0, a.coarse_shape, d0["image_size"])
            p1 = _cell_centres(c1, b.coarse_shape, d1["image_size"])
            cell = max(
                _cell_size(a.coarse_shape, d0["image_size"]), _cell_size(b.coarse_shape, d1["image_size"])
            )
            params = dataclasses.replace(_SCALE_RANSAC, threshold=conf.scale_threshold * cell)
            fit = ransac_homography(p0, p1, params, rng)
            confident = (sim >= conf.scale_min_similarity).cpu().numpy()
            score = 0.0 if fit is None else float((fit[1] & confident).sum())
        if score > best_score:
            best, best_score, best_matches = (k0, k1), score, (c0, c1)
    return best, best_matches


def _cell_size(shape: tuple[int, int], image_size: tuple[int, int]) -> float:
    """Side of one coarse cell in the frame of :func:`_cell_centres`."""
    return max(image_size[0] / shape[1], image_size[1] / shape[0]) / max(image_size)


def match_pair(conf: MatchConf, d0: dict, d1: dict, dense: bool) -> dict[str, np.ndarray]:
    """``matches0`` (N0,) int32 and ``matching_scores0`` (N0,) float16 of one pair of cached
    descriptors, and ``levels`` (2,) int8 where pyramid levels were searched."""
    extra = {}
    if dense and conf.coarse_to_fine:
        if conf.scale_search and max(len(d0["levels"]), len(d1["levels"])) > 1:
            (k0, k1), coarse = choose_levels(conf, d0, d1)
            extra["levels"] = np.asarray([k0, k1], np.int8)
        else:
            (k0, k1), coarse = (0, 0), None
        a, b = d0["levels"][k0], d1["levels"][k1]
        n0, n1 = a.fine_shape[0] * a.fine_shape[1], b.fine_shape[0] * b.fine_shape[1]
        i0, i1, s = coarse_to_fine(
            a.coarse,
            b.coarse,
            a.coarse_shape,
            b.coarse_shape,
            d0["fine"][a.offset : a.offset + n0],
            d1["fine"][b.offset : b.offset + n1],
            a.fine_shape,
            b.fine_shape,
            radius=conf.fine_radius,
            min_similarity=conf.min_similarity,
            ratio=conf.ratio,
            coarse_matches=coarse,
        )
        i0, i1 = i0 + a.offset, i1 + b.offset
    else:
        i0, i1, s = mutual_nn(d0["fine"], d1["fine"], ratio=conf.ratio, min_similarity=conf.min_similarity)
    n0 = d0["fine"].shape[0]
    matches0 = np.full(n0, -1, np.int32)
    scores0 = np.zeros(n0, np.float16)
    matches0[i0.cpu().numpy()] = i1.cpu().numpy()
    scores0[i0.cpu().numpy()] = s.cpu().numpy()
    return {"matches0": matches0, "matching_scores0": scores0, **extra}


def check_matcher(conf: AnyMatchConf, kind: type) -> None:
    """Refuse a matcher that cannot match features of config class ``kind``: LightGlue is trained
    on the peers' descriptors, coarse-to-fine matching needs the dense grids."""
    if isinstance(conf, LightGlueConf) and kind.kind != "peer":
        raise ConfigError(
            f"LightGlue matches the peer features (--features aliked, disk or xfeat), not {kind.kind}; "
            "use mnn or mnn-ratio"
        )
    if isinstance(conf, MatchConf) and conf.coarse_to_fine and not kind.dense:
        raise ConfigError(
            f"matcher {conf.name!r} is coarse-to-fine and needs dense features; use mnn or mnn-ratio"
        )


def _pair_function(
    conf: AnyMatchConf, reader: H5Reader, dense: bool, family: str | None, device: torch.device, needed: bool
) -> Callable[[str, str], dict[str, np.ndarray]]:
    """The function matching one pair of images of ``reader`` (its network loaded if ``needed``)."""
    if isinstance(conf, LightGlueConf):
        items = item_cache(reader, device)
        matcher = LightGlueMatcher(conf, str(family), device) if needed else None

        def pair(name0: str, name1: str) -> dict[str, np.ndarray]:
            assert matcher is not None
            return matcher(items.get(name0), items.get(name1))

        return pair
    cache = _DescriptorCache(reader, dense, device)

    def pair(name0: str, name1: str) -> dict[str, np.ndarray]:
        return match_pair(conf, cache.get(name0), cache.get(name1), dense)

    return pair


def _match_chunk(
    conf: AnyMatchConf, features: str, dense: bool, family: str | None, device: str, pairs: list, shard: str
) -> tuple[str, int]:
    """One Ray task: the matches of ``pairs`` into the shard file ``shard`` (resumable)."""
    torch.set_num_threads(1)  # one CPU per task
    identity = {"features": file_reference(Path(features), Path(shard))}
    with H5Reader(Path(features), "features") as reader:
        writer = pair_writer(Path(shard), "matches", conf, identity)
        todo = writer.pending([tuple(p) for p in pairs])
        pair = _pair_function(conf, reader, dense, family, resolve_device(device), bool(todo))
        with writer, torch.inference_mode():
            for name0, name1 in todo:
                writer.write((name0, name1), pair(name0, name1))
    return shard, len(pairs)


def match(
    conf: AnyMatchConf,
    features: Path,
    pairs: Path,
    out_dir: Path,
    *,
    overwrite: bool = False,
    device: str = "auto",
    executor: ExecutorConf = LOCAL,
) -> Path:
    """Match every pair of ``pairs`` whose images have features; resumable. With the Ray
    executor, groups of pairs are matched by Ray tasks into shards merged into the matches file.

    Returns:
        Path of the matches file.
    """
    feat_attrs = read_file_attrs(features)
    if feat_attrs.get("stage") != "features":
        raise SfmkitError(f"{features} is not an sfmkit feature file; pass the output of `sfmkit extract`")
    if feat_attrs.get("refined"):
        raise SfmkitError(
            f"{features} holds refined keypoints (from `sfmkit refine`, for `map`) without descriptors; "
            "match the feature file of `sfmkit extract`"
        )
    kind = feature_kind(feat_attrs.get("extractor"))
    check_matcher(conf, kind)
    dense = kind.dense
    family = None
    if isinstance(conf, LightGlueConf):
        family = (feat_attrs.get("config") or {}).get("model", "").split("-")[0]
        check_lightglue(family)  # the peers extra, before the matches file is created
    path = matches_path(conf, features, out_dir)
    prepare_shards(path, executor, overwrite)
    with H5Reader(features, "features") as reader:
        run = start_pair_run(
            path,
            "matches",
            conf,
            pairs,
            {k[0] for k in reader.items(1)},
            identity={"features": file_reference(features, path)},
            overwrite=overwrite,
        )
        if executor.kind == "ray" and run.todo:
            args = (conf, str(Path(features).resolve()), dense, family, device)
            run_sharded(
                executor, _match_chunk, args, run.todo, run.writer, "matches", 2, f"match {conf.name}"
            )
        else:
            pair = _pair_function(conf, reader, dense, family, resolve_device(device), bool(run.todo))
            with run.writer, torch.inference_mode():
                for name0, name1 in track(run.todo, f"match {conf.name}"):
                    run.writer.write((name0, name1), pair(name0, name1))
    run.finish()
    return path
