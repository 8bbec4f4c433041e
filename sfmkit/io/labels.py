"""The labels file (``labels.h5``) and GL3D's text files.

``labels.h5`` (see docs/architecture.md)::

    /images                     (N,) image names (relative paths)
    /overlap/common_track       (N, N) float32 CT
    /overlap/mesh               (N, N) float32 MO
    /overlap/combined           (N, N) float32 CO
    /pairs/strong, /pairs/weak  (M, 2) int32 index pairs i < j
    /masks/<i>/<j>              (32, 32) bool: cells of image i that see what image j sees
    attrs: schema_version, stage="labels", t_sfm, strong, weak, mask_size, grid, mesh, model,
           images (the image folder, when known)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sfmkit.errors import SfmkitError
from sfmkit.io.h5 import SCHEMA_VERSION
from sfmkit.utils.files import atomic_path


@dataclass
class Labels:
    names: list[str]
    common_track: np.ndarray
    mesh: np.ndarray
    combined: np.ndarray
    strong: np.ndarray
    weak: np.ndarray
    masks: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def write_labels(path: Path, labels: Labels) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:  # a complete file, or none
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["stage"] = "labels"
        for key, value in labels.attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
        f.create_dataset("images", data=np.array(labels.names, dtype=h5py.string_dtype()))
        for key in ("common_track", "mesh", "combined"):
            f.create_dataset(
                f"overlap/{key}", data=getattr(labels, key).astype(np.float32), compression="gzip"
            )
        f.create_dataset("pairs/strong", data=labels.strong.astype(np.int32).reshape(-1, 2))
        f.create_dataset("pairs/weak", data=labels.weak.astype(np.int32).reshape(-1, 2))
        masks = f.create_group("masks")
        for (i, j), mask in sorted(labels.masks.items()):
            masks.require_group(str(i)).create_dataset(str(j), data=mask.astype(bool))


def read_labels(path: Path, masks: bool = True) -> Labels:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise SfmkitError(f"cannot read labels file {path}: {exc}") from exc
    with f:
        if f.attrs.get("stage") != "labels":
            raise SfmkitError(f"{path} is not an sfmkit labels file (made by build-gl3d-labels)")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["images"][()]]
        read = (
            {(int(i), int(j)): f["masks"][i][j][()] for i in f["masks"] for j in f["masks"][i]}
            if masks
            else {}
        )
        attrs = {k: v for k, v in f.attrs.items()}
        return Labels(
            names,
            f["overlap/common_track"][()],
            f["overlap/mesh"][()],
            f["overlap/combined"][()],
            f["pairs/strong"][()],
            f["pairs/weak"][()],
            read,
            attrs,
        )


def image_folder(labels_path: Path, labels: Labels) -> Path:
    """Where the images of a labels file are."""
    recorded = labels.attrs.get("images")
    if recorded and Path(str(recorded)).is_dir():
        return Path(str(recorded))
    folder = Path(labels_path).parent / "images"
    if folder.is_dir():
        return folder
    raise SfmkitError(
        f"cannot find the images of {labels_path}: it records none that exists and there is no "
        f"{folder}; put the labels file next to its images/ folder"
    )


def write_gl3d_text(folder: Path, labels: Labels) -> list[Path]:
    """GL3D's ``common_track.txt`` and ``mesh_overlap.txt`` (``i j ratio`` for i < j, ratio > 0)
    and ``image_list.txt`` (index order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, matrix in (("common_track.txt", labels.common_track), ("mesh_overlap.txt", labels.mesh)):
        i, j = np.nonzero(np.triu(matrix > 0, k=1))
        lines = [f"{a} {b} {matrix[a, b]:.6f}" for a, b in zip(i, j, strict=True)]
        (folder / filename).write_text("\n".join(lines) + ("\n" if lines else ""))
        written.append(folder / filename)
    (folder / "image_list.txt").write_text("\n".join(labels.names) + "\n")
    written.append(folder / "image_list.txt")
    return written
