"""Index build and query time of sfmkit's faiss indexes, flat against approximate, with the
recall@10 of the approximate ones, on synthetic clustered unit vectors (256-D, like whitened
global descriptors).

    python benchmarks/retrieval_index.py -o bench_out --sizes 10000 100000 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sfmkit.retrieval.index import build_index, recall_at_k


def clustered(n: int, dim: int, rng: np.random.Generator, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around random centres (scenes / places), like real descriptor sets."""
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("bench_out"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        db = clustered(n, args.dim, rng)
        queries = db[rng.choice(n, args.queries, replace=False)] + 0.05 * rng.normal(
            size=(args.queries, args.dim)
        ).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        exact = None
        for kind in args.kinds:
            t = time.perf_counter()
            index = build_index(db, kind)
            build = time.perf_counter() - t
            t = time.perf_counter()
            _, ids = index.search(queries, 10)
            query = time.perf_counter() - t
            if kind == "flat":
                exact = ids
            recall = recall_at_k(ids, exact, 10) if exact is not None else float("nan")
            rows.append(
                {
                    "vectors": n,
                    "index": kind,
                    "build_s": round(build, 3),
                    "query_ms_per_query": round(1000 * query / args.queries, 4),
                    "recall@10": round(float(recall), 4),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "retrieval_index.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| vectors | index | build (s) | query (ms / query) | recall@10 vs flat |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            f"{r['vectors']:,}",
            r["index"],
            f"{r['build_s']:.2f}",
            f"{r['query_ms_per_query']:.3f}",
            f"{r['recall@10']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (args.output / "retrieval_index.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
