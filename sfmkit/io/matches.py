"""Readers of the per-pair stage files (``matches-*.h5``, ``verified-*.h5``) and the run
skeleton their stages share.

``matches``: per pair ``/<image0>/<image1>`` ``matches0`` (N0,) int32, the index of the
matched keypoint of image1 or -1, and ``matching_scores0`` (N0,) float16.

``verified``: per pair ``inliers`` (M, 2) int32 keypoint indices, ``homography_id`` (M,)
int8, ``homographies`` (K, 3, 3); attributes ``num_homographies``, ``num_matches``
(tentative) and ``selected`` (False when ``best_pairs`` dropped the pair).

A pair may be stored in either order; the readers return it in the order asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.io.h5 import H5Reader, ItemWriter, read_file_attrs, resolve_reference
from sfmkit.io.pairs import Pair, read_pairs
from sfmkit.utils.config import conf_to_json


def get_pair_matches(reader: H5Reader, pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) int index pairs into (keypoints0, keypoints1) and (M,) scores for ``pair``,
    whichever order the pair was stored in."""
    key, flipped = reader.pair_key(pair)
    m0 = reader.array(key, "matches0")
    s0 = reader.array(key, "matching_scores0")
    idx = np.flatnonzero(m0 >= 0)
    matches = np.stack([idx, m0[idx]], 1).astype(np.int64)
    return (matches[:, ::-1].copy() if flipped else matches), s0[idx].astype(np.float32)


def read_verified(reader: H5Reader, pair: Pair) -> np.ndarray | None:
    """(M, 2) verified index pairs in ``pair``'s order, or None if the pair is not selected."""
    key, flip = reader.pair_key(pair)
    if not reader.attrs(key).get("selected", True):
        return None
    inliers = reader.array(key, "inliers").astype(np.int64)
    return inliers[:, ::-1].copy() if flip else inliers


def inlier_counts(path: Path, pairs: list[Pair]) -> dict[Pair, int]:
    """Number of verified inliers per pair."""
    with H5Reader(path) as reader:
        return {pair: reader.shape(reader.pair_key(pair)[0], "inliers")[0] for pair in pairs}


def input_features(produced_from: Path, override: Path | None) -> Path:
    """The feature file a stage file was made from (its ``features`` attribute), or ``override``."""
    if override is not None:
        features = Path(override)
    else:
        recorded = read_file_attrs(produced_from).get("features", "")
        features = resolve_reference(recorded, produced_from) if recorded else Path("")
    if not features.is_file():
        raise SfmkitError(f"the feature file of {produced_from} ({features}) is missing; pass --features")
    return features


@dataclass
class PairRun:
    """One run of a per-pair stage: its single writer, the pairs asked for and those left.

    Attributes:
        writer: the stage file's :class:`ItemWriter` (pairs are items of depth 2).
        pairs: every pair of the pairs file whose images are known.
        todo: the pairs not yet in the file (in either order).
        start: when the run started (``time.perf_counter``).
    """

    writer: ItemWriter
    pairs: list[Pair]
    todo: list[Pair]
    start: float

    def finish(self, **counts: Any) -> None:
        """Record the ``last_run`` file attribute: pairs, computed, reused, ``counts``, seconds."""
        self.writer.set_attrs(
            last_run={
                "pairs": len(self.pairs),
                "computed": len(self.todo),
                "reused": len(self.pairs) - len(self.todo),
                **counts,
                "seconds": round(time.perf_counter() - self.start, 3),
            }
        )


def start_pair_run(
    path: Path,
    stage: str,
    conf: Any,
    pairs_file: Path,
    names: set[str],
    *,
    identity: dict[str, str],
    overwrite: bool = False,
) -> PairRun:
    """Open (or resume) the stage file ``path`` for the pairs of ``pairs_file`` among ``names``.

    ``identity`` holds the input files the stage file is made from; resuming a file made from
    other inputs or with another ``conf`` is refused (see :class:`ItemWriter`).
    """
    pair_list = read_pairs(pairs_file, names)  # before --overwrite deletes anything
    writer = pair_writer(path, stage, conf, identity, overwrite=overwrite)
    return PairRun(writer, pair_list, writer.pending(pair_list), time.perf_counter())


def pair_writer(
    path: Path, stage: str, conf: Any, identity: dict[str, str], *, overwrite: bool = False
) -> ItemWriter:
    """The writer of a per-pair stage file (or of a Ray task's shard of one): pairs are items
    of depth 2, made with ``conf`` from the inputs of ``identity``."""
    return ItemWriter(
        path, stage, conf_to_json(conf), depth=2, overwrite=overwrite, identity=identity, flush_every=64
    )
