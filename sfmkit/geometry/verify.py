"""The ``verify`` stage: matches -> ``verified-<tag>.h5`` by multi-homography RANSAC.

Layout per pair ``/<image0>/<image1>``: ``inliers`` (M, 2) int32 keypoint indices,
``homography_id`` (M,) int8, ``homographies`` (K, 3, 3); attributes ``num_homographies``,
``num_matches`` (tentative) and ``selected`` (False when ``best_pairs`` dropped the pair).
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfmkit.errors import ConfigError
from sfmkit.geometry.multi_homography import HomographySet, RansacParams, multi_homography_ransac
from sfmkit.io.h5 import H5Reader, ItemWriter, file_reference
from sfmkit.io.matches import get_pair_matches, inlier_counts, input_features, pair_writer, start_pair_run
from sfmkit.io.pairs import Pair
from sfmkit.io.shards import prepare_shards, run_sharded
from sfmkit.utils.config import derived_path
from sfmkit.utils.executor import LOCAL, ExecutorConf
from sfmkit.utils.parallel import ordered_map
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyConf:
    """Multi-homography verification.

    Attributes:
        name: preset name.
        method: ``multi-homography``, or ``none`` to pass the tentative matches on unchanged
            (pycolmap's two-view geometry in the map stage is then the only verification,
            as in COLMAP's own pipeline).
        threshold: inlier threshold in full-resolution pixels.
        max_homographies: at most this many homographies per pair.
        min_inliers: stop when the best remaining homography has fewer inliers.
        best_pairs: keep only each image's N pairs with most inliers (None = keep all).
        seed: RANSAC seed (combined with the pair's names).
    """

    name: str = "multi-homography"
    method: str = "multi-homography"
    threshold: float = 10.0
    max_homographies: int = 5
    min_inliers: int = 25
    best_pairs: int | None = None
    seed: int = 0
    max_iterations: int = 2000
    confidence: float = 0.999

    def __post_init__(self) -> None:
        if self.threshold <= 0 or not 1 <= self.max_homographies <= 127 or self.min_inliers < 4:
            raise ConfigError("need threshold > 0, 1 <= max_homographies <= 127 and min_inliers >= 4")
        if self.method not in ("multi-homography", "none"):
            raise ConfigError(f"unknown verification method {self.method!r}")
        if self.best_pairs is not None and self.best_pairs < 1:
            raise ConfigError("best_pairs must be at least 1")

    @property
    def ransac(self) -> RansacParams:
        return RansacParams(
            threshold=self.threshold,
            max_homographies=self.max_homographies,
            min_inliers=self.min_inliers,
            confidence=self.confidence,
            max_iterations=self.max_iterations,
        )


CONFS: dict[str, VerifyConf] = {
    "multi-homography": VerifyConf(),
    "none": VerifyConf(name="none", method="none"),
}


def verified_path(conf: VerifyConf, matches: Path, out_dir: Path) -> Path:
    return derived_path(out_dir, "verified", matches, "matches", conf, CONFS.get(conf.name))


def pair_seed(seed: int, pair: Pair) -> np.random.SeedSequence:
    """A seed that depends only on the global seed and the pair (not on processing order)."""
    return np.random.SeedSequence([seed, zlib.crc32(pair[0].encode()), zlib.crc32(pair[1].encode())])


def select_best_pairs(counts: dict[Pair, int], n: int) -> set[Pair]:
    """Pairs among the ``n`` pairs with most inliers of at least one of their two images."""
    per_image: dict[str, list[tuple[int, Pair]]] = defaultdict(list)
    for pair, count in counts.items():
        if count > 0:
            per_image[pair[0]].append((count, pair))
            per_image[pair[1]].append((count, pair))
    keep: set[Pair] = set()
    for ranked in per_image.values():
        ranked.sort(key=lambda cp: (-cp[0], cp[1]))
        keep.update(pair for _, pair in ranked[:n])
    return keep


def _verify_pairs(
    conf: VerifyConf,
    feats: H5Reader,
    mreader: H5Reader,
    todo: list[Pair],
    writer: ItemWriter,
    workers: int | None,
) -> None:
    """RANSAC on worker threads; reading (h5py) and writing stay in this thread."""
    kpts: dict[str, np.ndarray] = {}

    def load(pair: Pair) -> tuple[Pair, np.ndarray, np.ndarray, np.ndarray]:
        for name in pair:
            if name not in kpts:
                kpts[name] = feats.array((name,), "keypoints").astype(np.float64)
        m, _ = get_pair_matches(mreader, pair)
        return pair, m, kpts[pair[0]][m[:, 0]], kpts[pair[1]][m[:, 1]]

    def solve(job: tuple[Pair, np.ndarray, np.ndarray, np.ndarray]) -> tuple[Pair, np.ndarray, HomographySet]:
        pair, m, p0, p1 = job
        if conf.method == "none":
            return (
                pair,
                m,
                HomographySet(np.arange(len(m)), np.full(len(m), -1, np.int8), np.empty((0, 3, 3))),
            )
        return pair, m, multi_homography_ransac(p0, p1, conf.ransac, pair_seed(conf.seed, pair))

    jobs = (load(pair) for pair in todo)
    with writer:
        for pair, m, result in track(ordered_map(solve, jobs, workers), "verify", total=len(todo)):
            writer.write(
                pair,
                {
                    "inliers": m[result.inliers].astype(np.int32).reshape(-1, 2),
                    "homography_id": result.labels,
                    "homographies": result.homographies,
                },
                {"num_homographies": len(result.homographies), "num_matches": len(m), "selected": True},
            )


def _verify_chunk(conf: VerifyConf, features: str, matches: str, pairs: list, shard: str) -> tuple[str, int]:
    """One Ray task: the verified matches of ``pairs`` into the shard file ``shard`` (resumable;
    one RANSAC thread: the task has one CPU)."""
    identity = {
        "features": file_reference(Path(features), Path(shard)),
        "matches": file_reference(Path(matches), Path(shard)),
    }
    writer = pair_writer(Path(shard), "verified", conf, identity)
    with H5Reader(Path(features), "features") as feats, H5Reader(Path(matches), "matches") as mreader:
        _verify_pairs(conf, feats, mreader, writer.pending([tuple(p) for p in pairs]), writer, 1)
    return shard, len(pairs)


def verify(
    conf: VerifyConf,
    matches: Path,
    pairs: Path,
    out_dir: Path,
    *,
    features: Path | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    executor: ExecutorConf = LOCAL,
) -> Path:
    """Verify the matches of every pair in ``pairs``; resumable.

    Args:
        features: the feature file; by default the one the matches file was made from.
        workers: RANSAC threads (default: up to 4, one per core).
        executor: ``ray``: groups of pairs verified by Ray tasks into shards, merged into the file
            (RANSAC is seeded per pair, so the result is the local executor's).

    Returns:
        Path of the verified-matches file.
    """
    features = input_features(matches, features)
    path = verified_path(conf, matches, out_dir)
    identity = {"features": file_reference(features, path), "matches": file_reference(matches, path)}
    prepare_shards(path, executor, overwrite)
    with H5Reader(features, "features") as feats, H5Reader(matches, "matches") as mreader:
        names = {k[0] for k in feats.items(1)}
        run = start_pair_run(path, "verified", conf, pairs, names, identity=identity, overwrite=overwrite)
        if executor.kind == "ray" and run.todo:
            args = (conf, str(Path(features).resolve()), str(Path(matches).resolve()))
            run_sharded(executor, _verify_chunk, args, run.todo, run.writer, "verified", 2, "verify")
        else:
            _verify_pairs(conf, feats, mreader, run.todo, run.writer, workers)
    counts = inlier_counts(path, run.pairs)
    if conf.best_pairs is not None:
        keep = select_best_pairs(counts, conf.best_pairs)
        with H5Reader(path) as reader:
            stored = {pair: reader.pair_key(pair)[0] for pair in run.pairs}
        run.writer.set_item_attrs((stored[pair], {"selected": pair in keep}) for pair in run.pairs)
        logger.info("best_pairs=%d keeps %d of %d pairs", conf.best_pairs, len(keep), len(run.pairs))
    run.finish(pairs_with_inliers=sum(1 for c in counts.values() if c > 0))
    return path
