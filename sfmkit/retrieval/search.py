"""Search a global file: whitening, MAC / R-MAC / PR-MAC, a faiss index, pairs.

Every image is a query against every other image of the file (or of ``db_names``). Steps:

1. Whitening: the model's (``whitening="model"``, learned on its training scenes; none for a
   model without one, such as a plain backbone), a PCA learned on this database's regional
   vectors (``"database"``), or none. The same projection whitens MAC vectors and R-MAC
   regions. The database PCA is not a fallback: on the rendered test scenes it cost the plain
   backbone 12 points of MAC mAP@100 against no whitening (benchmarks/README.md).
2. Global vectors: whitened MAC, or R-MAC = normalise(sum of whitened, normalised regions).
   Computed in chunks of images, so memory stays bounded by the chunk and the (N, dim)
   global matrix; PR-MAC's whitened regions go to a memory-mapped file next to the output.
3. A faiss index over the global vectors (exact inner product below ``auto_threshold``
   vectors, IVF above; or as chosen), optional weighted query expansion, then top-k.
4. PR-MAC re-ranks the R-MAC shortlist (``shortlist`` nearest) by the distance of paper
   Eq. 9-10: the sum over query regions of the nearest database region (smaller is better).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.io.h5 import H5Reader
from sfmkit.models.whitening import Whitening
from sfmkit.retrieval.aggregation import prmac_distances
from sfmkit.retrieval.index import build_index, weighted_query_expansion
from sfmkit.retrieval.whitening import learn_whitening
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

AGGREGATIONS = ("mac", "rmac", "prmac")
WHITENINGS = ("model", "database", "none")
#: Regional vectors sampled at most to learn a database whitening.
MAX_WHITENING_SAMPLES = 200_000


@dataclass(frozen=True)
class SearchConf:
    """How to search (see the module docs).

    Attributes:
        aggregation: ``mac``, ``rmac`` or ``prmac``.
        top_k: neighbours kept per query.
        whitening: ``model``, ``database`` or ``none``.
        dim: whitened dimension (database whitening).
        index: ``auto``, ``flat``, ``ivf`` or ``hnsw``.
        auto_threshold: ``auto`` switches from flat to IVF above this many vectors.
        shortlist: R-MAC candidates re-ranked by PR-MAC.
        query_expansion: neighbours averaged into the query (0: off).
        chunk: images processed at a time.
    """

    aggregation: str = "prmac"
    top_k: int = 10
    whitening: str = "model"
    dim: int = 256
    index: str = "auto"
    auto_threshold: int = 50_000
    shortlist: int = 200
    query_expansion: int = 0
    chunk: int = 512

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise SfmkitError(f"unknown aggregation {self.aggregation!r}; choose among {AGGREGATIONS}")
        if self.whitening not in WHITENINGS:
            raise SfmkitError(f"unknown whitening {self.whitening!r}; choose among {WHITENINGS}")
        if self.top_k < 1:
            raise SfmkitError(f"top-k must be at least 1, got {self.top_k}")
        if self.shortlist < 1 or self.chunk < 1 or self.query_expansion < 0:
            raise SfmkitError("shortlist and chunk must be at least 1, query_expansion at least 0")


@dataclass
class SearchResult:
    """Neighbours of every query, best first.

    Attributes:
        queries: query image names.
        database: database image names (``ids`` index them).
        ids: (Q, K) database indices; -1 where fewer than K exist.
        scores: (Q, K) similarity (inner product; for PR-MAC the negated distance).
        whitening: which whitening was used, in words.
    """

    queries: list[str]
    database: list[str]
    ids: np.ndarray
    scores: np.ndarray
    whitening: str

    def pairs(self) -> list[tuple[str, str]]:
        """Unordered pairs query-neighbour, each once."""
        seen: set[frozenset[str]] = set()
        out = []
        for q, row in zip(self.queries, self.ids, strict=True):
            for j in row:
                if j < 0:
                    continue
                d = self.database[j]
                key = frozenset((q, d))
                if q != d and key not in seen:
                    seen.add(key)
                    out.append((q, d))
        return out


def _read_names(path: Path) -> list[str]:
    with H5Reader(path, "global") as reader:
        return sorted(k[0] for k in reader.items(1))


def _sample_regions(path: Path, names: Sequence[str], limit: int, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` regional vectors, spread evenly over the images."""
    rng = np.random.default_rng(seed)
    with H5Reader(path, "global") as reader:
        per_image = max(1, limit // max(1, len(names)))
        rows = []
        for name in names:
            regional = reader.array((name,), "regional").astype(np.float32)
            if len(regional) > per_image:
                regional = regional[rng.choice(len(regional), per_image, replace=False)]
            rows.append(regional)
    return np.concatenate(rows)


def choose_whitening(
    conf: SearchConf, path: Path, names: Sequence[str], model_whitening: Whitening | None
) -> tuple[Whitening | None, str]:
    """The whitening to use and a description of it."""
    if conf.whitening == "none":
        return None, "none"
    if conf.whitening == "model":
        if model_whitening is not None:
            return model_whitening, "the model's (learned on its training scenes)"
        logger.info("the retrieval model has no whitening; searching without one")
        return None, "none (the model has none)"
    sample = _sample_regions(path, names, MAX_WHITENING_SAMPLES)
    return learn_whitening(sample, conf.dim), f"learned on the database ({len(sample)} regional vectors)"


def _whiten(x: np.ndarray, whitening: Whitening | None) -> np.ndarray:
    if whitening is None:
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.asarray(whitening.apply(x), np.float32)


class _RegionStore:
    """Whitened regional vectors of every image in one memory-mapped file."""

    def __init__(self, folder: Path, total: int, dim: int) -> None:
        self._file = tempfile.NamedTemporaryFile(dir=folder, prefix=".regions-", suffix=".f16", delete=False)
        self._file.close()
        self.path = Path(self._file.name)
        self.data = np.memmap(self.path, np.float16, "w+", shape=(max(total, 1), dim))

    def close(self) -> None:
        del self.data
        self.path.unlink(missing_ok=True)


def search(
    path: Path,
    conf: SearchConf,
    *,
    model_whitening: Whitening | None = None,
    query_names: Sequence[str] | None = None,
    db_names: Sequence[str] | None = None,
    workdir: Path | None = None,
    device: str = "auto",
) -> SearchResult:
    """Nearest database images of every query image of the global file ``path``.

    Args:
        query_names, db_names: subsets of the file's images (default: all, both).
        workdir: where PR-MAC's temporary region file goes (default: next to ``path``).
        device: where the faiss index lives (``auto``: a GPU when faiss's GPU build sees one).
    """
    path = Path(path)
    all_names = _read_names(path)
    if not all_names:
        raise SfmkitError(f"{path} holds no global descriptors; run 'sfmkit retrieve' on an image folder")
    known = set(all_names)
    for label, subset in (("query", query_names), ("database", db_names)):
        missing = [n for n in subset or [] if n not in known]
        if missing:
            raise SfmkitError(f"{path} has no descriptor for {label} image {missing[0]!r}")
    database = list(db_names) if db_names is not None else all_names
    queries = list(query_names) if query_names is not None else database
    used = sorted(set(database) | set(queries))
    position = {n: i for i, n in enumerate(used)}
    whitening, white_text = choose_whitening(conf, path, database, model_whitening)

    # global vectors (and PR-MAC regions) in chunks
    with H5Reader(path, "global") as reader:
        counts = np.array([reader.shape((n,), "regional")[0] for n in used], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    dim = whitening.projection.shape[0] if whitening is not None else None
    vectors: np.ndarray | None = None
    store: _RegionStore | None = None
    try:
        with H5Reader(path, "global") as reader:
            for start in track(
                range(0, len(used), conf.chunk), "global vectors", total=-(-len(used) // conf.chunk)
            ):
                chunk = used[start : start + conf.chunk]
                regional = [reader.array((n,), "regional").astype(np.float32) for n in chunk]
                if conf.aggregation == "mac":
                    macs = np.stack([reader.array((n,), "global_descriptor") for n in chunk]).astype(
                        np.float32
                    )
                    block = _whiten(macs, whitening)
                else:
                    white = _whiten(np.concatenate(regional), whitening)
                    sums = np.add.reduceat(
                        white, np.concatenate([[0], np.cumsum([len(r) for r in regional])[:-1]])
                    )
                    block = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
                    if conf.aggregation == "prmac":
                        if store is None:
                            store = _RegionStore(
                                Path(workdir or path.parent), int(offsets[-1]), white.shape[1]
                            )
                        lo = offsets[start]
                        store.data[lo : lo + len(white)] = white.astype(np.float16)
                if vectors is None:
                    vectors = np.empty((len(used), dim or block.shape[1]), np.float32)
                vectors[start : start + len(chunk)] = block
        if vectors is None:
            raise SfmkitError(f"{path}: no database image to search; check the image list")
        db_rows = np.array([position[n] for n in database])
        q_rows = np.array([position[n] for n in queries])
        index = build_index(vectors[db_rows], conf.index, auto_threshold=conf.auto_threshold, device=device)
        # PR-MAC re-ranks a shortlist that must hold at least the top-k
        depth = max(conf.shortlist, conf.top_k) if conf.aggregation == "prmac" else conf.top_k
        depth = min(depth + 1, len(database))  # +1: the query itself is in the database
        qvec = vectors[q_rows]
        if conf.query_expansion > 0:
            scores, ids = index.search(qvec, min(conf.query_expansion + 1, len(database)))
            qvec = weighted_query_expansion(qvec, vectors[db_rows], ids, scores)
        scores, ids = index.search(qvec, depth)
        # drop the query itself; PR-MAC re-ranks the shortlist
        db_pos = {n: i for i, n in enumerate(database)}
        keep_ids = np.full((len(queries), conf.top_k), -1, np.int64)
        keep_scores = np.full((len(queries), conf.top_k), -np.inf, np.float32)
        for qi, q in enumerate(track(queries, f"{conf.aggregation} ranking", total=len(queries))):
            own = db_pos.get(q, -2)
            cand = [(s, j) for s, j in zip(scores[qi], ids[qi], strict=True) if j >= 0 and j != own]
            if conf.aggregation == "prmac" and cand and store is not None:
                cand_ids = np.array([j for _, j in cand])
                rows = db_rows[cand_ids]
                qr = np.asarray(store.data[offsets[q_rows[qi]] : offsets[q_rows[qi] + 1]], np.float32)
                regions = [np.asarray(store.data[offsets[r] : offsets[r + 1]], np.float32) for r in rows]
                dist = prmac_distances(qr, regions)
                order = np.argsort(dist, kind="stable")
                cand = [(-float(dist[o]), int(cand_ids[o])) for o in order]
            cand = cand[: conf.top_k]
            keep_ids[qi, : len(cand)] = [j for _, j in cand]
            keep_scores[qi, : len(cand)] = [s for s, _ in cand]
    finally:
        if store is not None:
            store.close()
    return SearchResult(queries, database, keep_ids, keep_scores, white_text)
