"""Pair sets (``pairs.h5``, made by ``sfmkit build-pair-set``): image pairs labelled same /
different, with the shared region of each image, the training and test data of GetNet and its
plain Siamese baseline.

Layout::

    /images          (N, C, S, S) uint8, every image resized (squashed) to S x S
    /names           (N,) where each image came from (a path relative to its folder, or
                     "<class>/<index>" for the digits protocol)
    /group           (N,) int32: the scene (labels file) or class an image belongs to
    /pairs           (M, 2) int32 rows of /images
    /same            (M,) uint8: 1 when the two images show the same surface (or digit class)
    /kind            (M,) uint8: 0 negative in another scene or class, 1 negative in the same
                     scene, 2 strong positive, 3 weak positive (small shared region)
    /overlap         (M,) float32: the labels' combined overlap ratio (CO) of the pair (digits: 1 / 0)
    /region          (M, 2, 4) float32: the shared region of each image as (x0, y0, x1, y1)
                     fractions of the image side; NaN where there is none (scene negatives;
                     digits keep the glyph's box in every image)
    attrs: stage="pair-set", schema, source ("digits" | "labels"), config (JSON), counts (JSON)

The file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.utils.files import atomic_path

SCHEMA = 1
STAGE = "pair-set"
#: Values of ``/kind``.
KINDS = {"negative-other": 0, "negative-same-scene": 1, "strong": 2, "weak": 3}


@dataclass
class PairSet:
    """A pair set in memory."""

    images: np.ndarray
    names: list[str]
    group: np.ndarray
    pairs: np.ndarray
    same: np.ndarray
    kind: np.ndarray
    overlap: np.ndarray
    region: np.ndarray
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> int:
        return int(self.images.shape[2])

    def check(self, path: Path | str = "pair set") -> None:
        """Refuse inconsistent arrays (a clear error instead of an index error in training)."""
        n, m = len(self.images), len(self.pairs)
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2:
            raise SfmkitError(f"{path}: /pairs must be (M, 2), got {self.pairs.shape}")
        if not m:
            raise SfmkitError(f"{path} holds no pairs: give more labels files or images")
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise SfmkitError(f"{path}: images must be (N, C, S, S), got {self.images.shape}")
        shapes = {"same": (m,), "kind": (m,), "overlap": (m,), "region": (m, 2, 4)}
        for key, shape in shapes.items():
            if getattr(self, key).shape != shape:
                raise SfmkitError(f"{path}: /{key} has shape {getattr(self, key).shape}, expected {shape}")
        if m and (self.pairs.min() < 0 or self.pairs.max() >= n):
            raise SfmkitError(f"{path}: /pairs names images outside 0..{n - 1}")


def write_pair_set(path: Path, data: PairSet, config: dict[str, Any], source: str) -> Path:
    """Write a complete pair set (temporary name, then renamed)."""
    data.check(path)
    counts = {
        "images": len(data.images),
        "pairs": len(data),
        **{k: int((data.kind == v).sum()) for k, v in KINDS.items()},
    }
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(stage=STAGE, schema=SCHEMA, source=source, config=json.dumps(config))
        f.attrs["counts"] = json.dumps(counts)
        chunks = (1, *data.images.shape[1:]) if len(data.images) else None
        f.create_dataset("images", data=data.images, compression="gzip", chunks=chunks)
        f.create_dataset("names", data=np.array(data.names, dtype=h5py.string_dtype()))
        f.create_dataset("group", data=data.group.astype(np.int32))
        f.create_dataset("pairs", data=data.pairs.astype(np.int32).reshape(-1, 2))
        f.create_dataset("same", data=data.same.astype(np.uint8))
        f.create_dataset("kind", data=data.kind.astype(np.uint8))
        f.create_dataset("overlap", data=data.overlap.astype(np.float32))
        f.create_dataset("region", data=data.region.astype(np.float32))
    return Path(path)


def read_pair_set(path: Path) -> PairSet:
    """A pair set, all in memory; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"pair set {path} does not exist: make one with 'sfmkit build-pair-set'")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SfmkitError(f"cannot read pair set {path}: {exc}") from exc
    with f:
        if f.attrs.get("stage") != STAGE or f.attrs.get("schema") != SCHEMA:
            raise SfmkitError(
                f"{path} is not an sfmkit pair set of schema {SCHEMA} (made by 'sfmkit build-pair-set')"
            )
        try:
            data = PairSet(
                images=f["images"][()],
                names=[n.decode() if isinstance(n, bytes) else str(n) for n in f["names"][()]],
                group=f["group"][()],
                pairs=f["pairs"][()],
                same=f["same"][()],
                kind=f["kind"][()],
                overlap=f["overlap"][()],
                region=f["region"][()],
                attrs={k: json.loads(v) if k in ("config", "counts") else v for k, v in f.attrs.items()},
            )
        except (KeyError, OSError, ValueError) as exc:
            raise SfmkitError(f"{path} is damaged or incomplete ({exc}): build it again") from exc
    data.check(path)
    return data


def merge_pair_sets(sets: list[PairSet]) -> PairSet:
    """Several pair sets as one (image rows and groups renumbered); all must share C and S."""
    if not sets:
        raise SfmkitError("no pair sets given")
    shapes = {s.images.shape[1:] for s in sets}
    if len(shapes) > 1:
        raise SfmkitError(
            f"the pair sets hold images of different shapes {sorted(shapes)}: build them with one --size"
        )
    offset = group_offset = 0
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("images", "group", "pairs", "same", "kind", "overlap", "region")
    }
    names: list[str] = []
    for s in sets:
        parts["images"].append(s.images)
        parts["group"].append(s.group + group_offset)
        parts["pairs"].append(s.pairs + offset)
        for key in ("same", "kind", "overlap", "region"):
            parts[key].append(getattr(s, key))
        names += s.names
        offset += len(s.images)
        group_offset += int(s.group.max()) + 1 if len(s.group) else 0
    merged = {k: np.concatenate(v) for k, v in parts.items()}
    return PairSet(names=names, attrs=dict(sets[0].attrs), **merged)


def load_square(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image as GetNet sees it: RGB (3, size, size) uint8, squashed to a square (EXIF
    orientation applied), and its full-resolution (W, H), to map regions back to pixels."""
    from PIL import Image

    from sfmkit.io.images import read_image

    loaded = read_image(Path(path), max_size=4 * size)
    square = Image.fromarray(loaded.rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(square, np.uint8).transpose(2, 0, 1).copy(), loaded.size
