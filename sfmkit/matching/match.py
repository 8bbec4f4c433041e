"""The ``match`` stage: features + pairs -> ``matches-<tag>.h5`` (resumable).

Layout per pair ``/<image0>/<image1>``: ``matches0`` (N0,) int32, the index of the matched
keypoint of image1 or -1, and ``matching_scores0`` (N0,) float16 (cosine similarity).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.features import feature_kind
from sfmkit.io.h5 import H5Reader, read_file_attrs
from sfmkit.io.matches import start_pair_run
from sfmkit.matching.coarse_to_fine import coarse_to_fine
from sfmkit.matching.mutual_nn import mutual_nn
from sfmkit.utils.config import derived_path
from sfmkit.utils.device import resolve_device
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
        ratio: optional Lowe ratio (both directions); None = no ratio test.
        min_similarity: optional lower bound on the cosine similarity of a match.
    """

    name: str = "mnn-c2f"
    coarse_to_fine: bool = True
    fine_radius: int = 1
    ratio: float | None = None
    min_similarity: float | None = None

    def __post_init__(self) -> None:
        if self.fine_radius < 0:
            raise ConfigError("fine_radius must be >= 0")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError("ratio must be in (0, 1]")


CONFS: dict[str, MatchConf] = {
    "mnn-c2f": MatchConf(),
    "mnn": MatchConf(name="mnn", coarse_to_fine=False),
    "mnn-ratio": MatchConf(name="mnn-ratio", coarse_to_fine=False, ratio=0.8),
}


def matches_path(conf: MatchConf, features: Path, out_dir: Path) -> Path:
    return derived_path(out_dir, "matches", features, "features", conf, CONFS.get(conf.name))


class _DescriptorCache:
    """Per-image descriptors as torch tensors, least recently used evicted past a byte budget."""

    def __init__(self, reader: H5Reader, dense: bool, device: torch.device, budget: int = 2 << 30):
        self.reader, self.dense, self.device, self.budget = reader, dense, device, budget
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._bytes = 0

    def get(self, name: str) -> dict:
        if name in self._items:
            self._items.move_to_end(name)
            return self._items[name]
        key = (name,)
        if not self.reader.has(key):
            raise SfmkitError(f"{self.reader.path} has no features for {name}; run extract first")
        item = {"fine": self._tensor(self.reader.array(key, "descriptors"))}
        if self.dense:
            item["fine_shape"] = tuple(int(v) for v in self.reader.array(key, "grid_shape"))
            item["coarse"] = self._tensor(self.reader.array(key, "coarse/descriptors"))
            item["coarse_shape"] = tuple(int(v) for v in self.reader.array(key, "coarse/grid_shape"))
        size = sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
        self._items[name] = item
        self._bytes += size
        item["_bytes"] = size
        while self._bytes > self.budget and len(self._items) > 2:
            _, old = self._items.popitem(last=False)
            self._bytes -= old["_bytes"]
        return item

    def _tensor(self, desc: np.ndarray) -> torch.Tensor:
        """(D, N) stored descriptors -> (N, D) float32 unit vectors."""
        t = torch.from_numpy(np.ascontiguousarray(desc.T)).to(self.device).float()
        return torch.nn.functional.normalize(t, dim=1)


def match_pair(conf: MatchConf, d0: dict, d1: dict, dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """matches0 (N0,) int32 and scores0 (N0,) float16 for one pair of cached descriptors."""
    if dense and conf.coarse_to_fine:
        i0, i1, s = coarse_to_fine(
            d0["coarse"],
            d1["coarse"],
            d0["coarse_shape"],
            d1["coarse_shape"],
            d0["fine"],
            d1["fine"],
            d0["fine_shape"],
            d1["fine_shape"],
            radius=conf.fine_radius,
            min_similarity=conf.min_similarity,
        )
    else:
        i0, i1, s = mutual_nn(d0["fine"], d1["fine"], ratio=conf.ratio, min_similarity=conf.min_similarity)
    n0 = d0["fine"].shape[0]
    matches0 = np.full(n0, -1, np.int32)
    scores0 = np.zeros(n0, np.float16)
    matches0[i0.cpu().numpy()] = i1.cpu().numpy()
    scores0[i0.cpu().numpy()] = s.cpu().numpy()
    return matches0, scores0


def match(
    conf: MatchConf,
    features: Path,
    pairs: Path,
    out_dir: Path,
    *,
    overwrite: bool = False,
    device: str = "auto",
) -> Path:
    """Match every pair of ``pairs`` whose images have features; resumable.

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
    dense = feature_kind(feat_attrs.get("extractor")).dense
    if conf.coarse_to_fine and not dense:
        raise ConfigError(
            f"matcher {conf.name!r} is coarse-to-fine and needs dense features; use mnn or mnn-ratio"
        )
    path = matches_path(conf, features, out_dir)
    with H5Reader(features, "features") as reader:
        run = start_pair_run(
            path,
            "matches",
            conf,
            pairs,
            {k[0] for k in reader.items(1)},
            identity={"features": str(Path(features).resolve())},
            overwrite=overwrite,
        )
        cache = _DescriptorCache(reader, dense, resolve_device(device))
        with run.writer, torch.inference_mode():
            for name0, name1 in track(run.todo, f"match {conf.name}"):
                matches0, scores0 = match_pair(conf, cache.get(name0), cache.get(name1), dense)
                run.writer.write((name0, name1), {"matches0": matches0, "matching_scores0": scores0})
    run.finish()
    return path
