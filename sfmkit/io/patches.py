"""Patch files (``patches.h5``, made by ``sfmkit build-patches``): keypoint patches supervised by
structure-from-motion, the training data of the multiscale detector and triplet descriptor.

Layout (grayscale, uint8)::

    /images                         (N,) image names
    /patches/<S>                    (n_S, S, S) uint8, every kind of patch of side S
    /positives/{track,image,size,index,xy,sigma}
    /jittered/{image,size,index,xy,offset,source}   offset: keypoint minus patch centre (px);
                                                   source: row of the positive it copies
    /negatives/{image,size,index,xy}
    attrs: stage="patches", schema, config (JSON), model, images, scales (where from), counts

``index`` is the row in ``/patches/<size>``; ``xy`` the patch centre in the COLMAP pixel
convention (top-left pixel centre at (0.5, 0.5)). The file is written to a temporary name
and renamed when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.utils.files import atomic_path

SCHEMA = 1
KINDS = ("positives", "jittered", "negatives")


def write_patches(
    path: Path,
    images: list[str],
    patches: dict[int, np.ndarray],
    tables: dict[str, dict[str, np.ndarray]],
    **attrs: Any,
) -> Path:
    """Write a patches file atomically (a complete file or none).

    Args:
        images: image names, indexed by the tables' ``image`` column.
        patches: side S -> (n_S, S, S) uint8 patches.
        tables: each of :data:`KINDS` -> its columns (empty dict for an empty table).
        attrs: further file attributes (config, model, images_dir, scales, counts).
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=np.array(images, dtype=h5py.string_dtype()))
        for size, data in patches.items():
            f.create_dataset(
                f"patches/{size}",
                data=data,
                chunks=(min(max(len(data), 1), 64), size, size) if len(data) else None,
                compression="gzip",
                compression_opts=1,
            )
        for kind in KINDS:
            group = f.create_group(kind)
            for key, value in tables[kind].items():
                group.create_dataset(key, data=value)
        f.attrs.update(stage="patches", schema=SCHEMA, **attrs)
    return Path(path)


@dataclass
class PatchSet:
    """A patches file in memory: patch arrays per size and the three tables."""

    path: Path
    images: list[str]
    patches: dict[int, np.ndarray]
    positives: dict[str, np.ndarray]
    jittered: dict[str, np.ndarray]
    negatives: dict[str, np.ndarray]
    attrs: dict[str, Any]

    def get(self, table: dict[str, np.ndarray], rows: np.ndarray) -> tuple[int, np.ndarray]:
        """The patches of ``rows`` of ``table`` (all of one size): (size, (n, S, S) uint8)."""
        sizes = np.unique(table["size"][rows])
        if len(sizes) != 1:
            raise ValueError("rows must share one patch size")
        size = int(sizes[0])
        return size, self.patches[size][table["index"][rows]]


def read_patches(path: Path) -> PatchSet:
    """Load a file written by :func:`write_patches` (everything in memory)."""
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"patches file {path} does not exist; make it with 'sfmkit build-patches'")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("stage") != "patches":
                raise SfmkitError(
                    f"{path} is not an sfmkit patches file (make it with 'sfmkit build-patches')"
                )
            if int(f.attrs.get("schema", 0)) != SCHEMA:
                raise SfmkitError(f"{path} has patches schema {f.attrs.get('schema')}, expected {SCHEMA}")
            images = [n.decode() if isinstance(n, bytes) else str(n) for n in f["images"][()]]
            patches = {int(s): f[f"patches/{s}"][()] for s in f["patches"]}
            tables = {k: {c: f[k][c][()] for c in f[k]} for k in KINDS}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise SfmkitError(f"cannot read patches file {path}: {exc}") from exc
    return PatchSet(
        path, images, patches, tables["positives"], tables["jittered"], tables["negatives"], attrs
    )
