"""Nearest-neighbour search over L2-normalised global descriptors with faiss (inner product).

Kinds: ``flat`` (exact, IndexFlatIP), ``ivf`` (IndexIVFFlat: k-means cells, ``nprobe`` of
them visited per query), ``hnsw`` (IndexHNSWFlat graph, ``ef_search`` candidates per query)
and ``auto``: flat up to ``auto_threshold`` vectors, IVF above. On unit vectors the inner
product is the cosine similarity, so the best neighbours have the largest scores.

GPU: with faiss's GPU build installed (``pip install 'sfmkit[gpu]'``, which brings ``faiss-gpu``)
and a CUDA device visible, flat and IVF indexes are built on the CPU and moved to the GPU
(``device="auto"`` or ``"cuda[:N]"``); HNSW has no GPU version and stays on the CPU. With the
CPU build, or no visible GPU, everything runs on the CPU, with the same results.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from sfmkit.errors import SfmkitError

logger = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw")
#: Index kinds faiss can move to a GPU.
GPU_KINDS = ("flat", "ivf")
#: faiss's GPU indexes return at most this many neighbours (and visit at most this many cells).
GPU_MAX_K = 2048
#: Vectors added to an index at a time.
ADD_CHUNK = 65_536
#: faiss k-means wants at least this many training vectors per IVF cell.
MIN_POINTS_PER_CELL = 39
#: Training vectors sampled per IVF cell, at most.
MAX_POINTS_PER_CELL = 256


def as_float32(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """(N, D) float32, C-contiguous (copied only when needed)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise SfmkitError(f"{name} must be an (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise SfmkitError(f"{name} must be numbers, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def default_nlist(n: int) -> int:
    """About 4 sqrt(N) IVF cells, at most N / 39 (so k-means has enough points), at least 1."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // MIN_POINTS_PER_CELL))


@dataclass
class VectorIndex:
    """A faiss inner-product index and its search settings.

    Attributes:
        index: the faiss index.
        kind: ``flat``, ``ivf`` or ``hnsw`` (``auto`` resolved).
        ntotal: number of vectors indexed.
        dim: their dimension.
        nprobe: IVF cells visited per query (ivf only; capped by the number of cells).
        ef_search: HNSW candidate-list size per query (hnsw only; raised to k when smaller).
        gpu: the CUDA device the index lives on, or None (CPU).
        nlist: IVF cells (ivf only).
        resources: faiss's GPU resources of a GPU index (kept alive with it).
    """

    index: faiss.Index
    kind: str
    ntotal: int
    dim: int
    nprobe: int = 16
    ef_search: int = 128
    gpu: int | None = None
    nlist: int = 0
    resources: Any = None

    def search(self, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar indexed vectors of each query, best first.

        Args:
            queries: (M, D) query vectors (L2-normalised).
            k: neighbours asked for; clipped to ``ntotal``.
            chunk: queries searched at a time (bounds the memory of the result blocks).

        Returns:
            scores (M, k') float32 inner products and ids (M, k') int64 row numbers of the
            indexed vectors, k' = min(k, ntotal). An approximate index can find fewer than k'
            neighbours for a query: the missing ones have id -1 and score -inf.
        """
        q = as_float32(queries, "queries")
        if q.shape[1] != self.dim:
            raise SfmkitError(
                f"the index holds {self.dim}-dimensional vectors but the queries are {q.shape[1]}"
            )
        if k < 1:
            raise SfmkitError(f"the number of neighbours must be at least 1, got {k}")
        if chunk < 1:
            raise SfmkitError(f"the query chunk must be at least 1, got {chunk}")
        k = min(k, self.ntotal)
        if self.gpu is not None and k > GPU_MAX_K:
            raise SfmkitError(
                f"a GPU index returns at most {GPU_MAX_K} neighbours, {k} were asked for; "
                "build the index with device='cpu'"
            )
        if self.kind == "ivf":
            nprobe = max(1, min(self.nprobe, self.nlist))
            if self.gpu is None:
                self.index.nprobe = nprobe
            else:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.ef_search, k)
        scores = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        for start in range(0, len(q), chunk):
            s, i = self.index.search(q[start : start + chunk], k)
            scores[start : start + len(s)] = s
            ids[start : start + len(i)] = i
        scores[ids < 0] = -np.inf
        return scores, ids


def _add(index: faiss.Index, x: np.ndarray) -> None:
    for start in range(0, len(x), ADD_CHUNK):
        index.add(x[start : start + ADD_CHUNK])


def gpu_for(device: str, kind: str) -> int | None:
    """The CUDA device a ``kind`` index goes to for ``device`` (``auto``, ``cpu``, ``cuda[:N]``),
    or None: the CPU build of faiss, no visible GPU, ``cpu`` asked for, or a kind without a GPU
    version."""
    if kind not in GPU_KINDS or not (device == "auto" or device.startswith("cuda")):
        return None
    if not hasattr(faiss, "StandardGpuResources"):
        if device.startswith("cuda"):
            logger.warning(
                "faiss is the CPU build, so the index stays on the CPU: pip install 'sfmkit[gpu]', "
                "then pip install --force-reinstall --no-deps faiss-gpu (see docs/scaling.md)"
            )
        return None
    visible = faiss.get_num_gpus()
    gpu = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    if gpu >= visible:
        if device != "auto":
            logger.warning("faiss sees %d GPU(s), not %s: index on the CPU", visible, device)
        return None
    return gpu


def to_gpu(index: faiss.Index, gpu: int) -> tuple[faiss.Index, Any]:
    """``index`` copied to CUDA device ``gpu``, and the GPU resources it uses (which must live as
    long as it does)."""
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, gpu, index), resources


def build_index(
    x: np.ndarray,
    kind: str = "auto",
    *,
    auto_threshold: int = 50_000,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 128,
    seed: int = 0,
    device: str = "auto",
) -> VectorIndex:
    """Index the rows of ``x`` for inner-product search.

    Args:
        x: (N, D) L2-normalised vectors (converted to float32, C-contiguous).
        kind: ``auto``, ``flat``, ``ivf`` or ``hnsw`` (see the module docs).
        auto_threshold: ``auto`` builds a flat index up to this many vectors, IVF above.
        nlist: IVF cells (default :func:`default_nlist`); at most N.
        nprobe: IVF cells visited per query (change it later on the returned index).
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search candidate-list size (change it later on the returned index).
        seed: random sample of the IVF training vectors and of its k-means.
        device: ``auto`` (a GPU when faiss's GPU build sees one), ``cpu`` or ``cuda[:N]``;
            other torch devices (``mps``) keep the index on the CPU.

    Returns:
        The :class:`VectorIndex`.
    """
    if kind not in KINDS:
        raise SfmkitError(f"unknown index kind {kind!r}; choose among {KINDS}")
    x = as_float32(x)
    n, d = x.shape
    if n == 0 or d == 0:
        raise SfmkitError(f"cannot index an empty set of vectors (shape {x.shape})")
    if kind == "auto":
        kind = "flat" if n <= auto_threshold else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        if hnsw_m < 2:
            raise SfmkitError(f"the HNSW degree must be at least 2, got {hnsw_m}")
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        cells = default_nlist(n) if nlist is None else nlist
        if not 1 <= cells <= n:
            raise SfmkitError(f"IVF needs between 1 and {n} cells for {n} vectors, got {cells}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = x
        if n > MAX_POINTS_PER_CELL * cells:
            rng = np.random.default_rng(seed)
            sample = x[np.sort(rng.choice(n, MAX_POINTS_PER_CELL * cells, replace=False))]
        logger.info("training an IVF index of %d cells on %d of %d vectors", cells, len(sample), n)
        index.train(sample)
    _add(index, x)
    gpu, resources = gpu_for(device, kind), None
    if gpu is not None:
        logger.info("moving the %s index of %d vectors to GPU %d", kind, n, gpu)
        try:
            index, resources = to_gpu(index, gpu)
        except RuntimeError as exc:  # e.g. out of GPU memory: the CPU index still works
            logger.warning("could not move the index to GPU %d (%s); searching on the CPU", gpu, exc)
            gpu = None
    return VectorIndex(
        index,
        kind,
        int(index.ntotal),
        d,
        nprobe=nprobe,
        ef_search=ef_search,
        gpu=gpu,
        nlist=cells if kind == "ivf" else 0,
        resources=resources,
    )


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the exact top-k found in the approximate top-k.

    Ids of -1 (missing neighbours) are ignored; a query without any exact neighbour is left
    out of the mean (NaN when no query has one).
    """
    approx = np.asarray(approx_ids)[:, :k]
    exact = np.asarray(exact_ids)[:, :k]
    if len(approx) != len(exact):
        raise SfmkitError(f"recall needs as many approximate ({len(approx)}) as exact ({len(exact)}) rows")
    valid = exact >= 0
    found = (exact[:, :, None] == approx[:, None, :]).any(axis=2) & valid
    counts = valid.sum(axis=1)
    used = counts > 0
    if not used.any():
        return float("nan")
    return float(np.mean(found.sum(axis=1)[used] / counts[used]))


def weighted_query_expansion(
    queries: np.ndarray,
    database: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    *,
    n: int | None = None,
    alpha: float = 3.0,
) -> np.ndarray:
    """alpha-weighted query expansion (alpha-QE).

    new query = normalise(q + sum over its top-n neighbours x of max(sim(q, x), 0)^alpha * x),
    so close neighbours count almost fully and far ones hardly at all. If the query itself is
    among its neighbours (a database image searched against its own database) it is counted
    once more, with weight 1.

    Args:
        queries: (M, D) query vectors.
        database: (N, D) indexed vectors (``ids`` index its rows).
        ids: (M, K) neighbours of each query, best first, from :meth:`VectorIndex.search`;
            -1 entries are ignored.
        scores: (M, K) their similarities.
        n: neighbours used (default: all K columns).
        alpha: weight exponent (0: plain average query expansion).

    Returns:
        (M, D) float32 expanded queries, L2-normalised.
    """
    q = as_float32(queries, "queries")
    db = np.asarray(database)
    ids = np.asarray(ids, np.int64)
    sims = np.asarray(scores, np.float32)
    if ids.shape != sims.shape or ids.ndim != 2 or len(ids) != len(q):
        raise SfmkitError(
            f"expected (M, K) ids and scores with M = {len(q)} queries, "
            f"got shapes {ids.shape} and {sims.shape}"
        )
    if db.ndim != 2 or db.shape[1] != q.shape[1]:
        raise SfmkitError(f"queries are {q.shape[1]}-dimensional but the database has shape {db.shape}")
    if n is not None:
        ids, sims = ids[:, :n], sims[:, :n]
    weights = np.where(ids >= 0, np.maximum(np.nan_to_num(sims, neginf=0.0), 0.0) ** alpha, 0.0)
    neighbours = db[np.maximum(ids, 0)].astype(np.float32)
    expanded = q + np.einsum("mk,mkd->md", weights.astype(np.float32), neighbours)
    return expanded / np.maximum(np.linalg.norm(expanded, axis=1, keepdims=True), 1e-12)
