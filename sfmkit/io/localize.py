"""Localisation sets (``set.h5``, made by ``sfmkit build-localize-set``): close-ups (targets) and
the wide-image tiles (sources) that contain them, the training and test data of FTFY and its
triplet baseline.

Layout (RGB, uint8)::

    /images                      (N,) image names (relative to the image folder)
    /sources                     (G, 256, 256, 3) one source tile per patch group
    /targets                     (M, 128, 128, 3) the close-ups, at full resolution resized
    /groups/image                (G,) row in /images
    /groups/factor               (G,) down-sampling factor of the source
    /groups/window               (G, 4) the source tile in full-resolution pixels (x0, y0, x1, y1)
    /samples/group               (M,) row in /groups
    /samples/box                 (M, 4) the target's box in its source tile, as fractions of the
                                 tile side (x0, y0, x1, y1)
    /samples/box_full            (M, 4) the same box in full-resolution pixels
    /samples/band                (M,) 0: the group's key box; 1, 2, 3: a shifted copy whose IoU
                                 with the key box is in [0.7, 1), [0.5, 0.7), [0.3, 0.5)
    /samples/query_image         optional (M,) row in /images of the image the close-up is cut
                                 from (cross-view sets); absent: the group's image
    /samples/query_box           optional (M, 4) the close-up in that image (full-resolution
                                 pixels); absent: box_full
    /samples/scale               optional (M,) close-up side over its footprint's side in the
                                 reduced image; absent: the factor
    attrs: stage="localize-set", schema, config (JSON), images_dir, counts (JSON)

Pixel coordinates put the top-left corner of the top-left pixel at (0, 0). The file is written to
a temporary name and renamed when complete.
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
STAGE = "localize-set"


@dataclass
class LocalizeSet:
    """A localisation set in memory."""

    path: Path
    images: list[str]
    sources: np.ndarray
    targets: np.ndarray
    groups: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return len(self.targets)

    def source_of(self, rows: np.ndarray) -> np.ndarray:
        """The source tiles of sample ``rows``."""
        return self.sources[self.samples["group"][rows]]

    def factor_of(self, rows: np.ndarray) -> np.ndarray:
        """The down-sampling factors of sample ``rows``."""
        return self.groups["factor"][self.samples["group"][rows]]

    def query_of(self, row: int) -> tuple[int, np.ndarray, float]:
        """Where sample ``row``'s close-up comes from: (row in :attr:`images`, box in that image
        in full-resolution pixels, close-up side over its footprint's side in the reduced
        searched image)."""
        group = int(self.samples["group"][row])
        if "query_image" in self.samples:
            return (
                int(self.samples["query_image"][row]),
                np.asarray(self.samples["query_box"][row], np.float64),
                float(self.samples["scale"][row]),
            )
        return (
            int(self.groups["image"][group]),
            np.asarray(self.samples["box_full"][row], np.float64),
            float(self.groups["factor"][group]),
        )


def write_localize_set(
    path: Path,
    images: list[str],
    sources: np.ndarray,
    targets: np.ndarray,
    groups: dict[str, np.ndarray],
    samples: dict[str, np.ndarray],
    **attrs: Any,
) -> Path:
    """Write a localisation set atomically (a complete file or none)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=np.array(images, dtype=h5py.string_dtype()))
        for name, data in (("sources", sources), ("targets", targets)):
            f.create_dataset(
                name,
                data=data,
                chunks=(1, *data.shape[1:]) if len(data) else None,
                compression="gzip",
                compression_opts=1,
            )
        for group_name, table in (("groups", groups), ("samples", samples)):
            group = f.create_group(group_name)
            for key, value in table.items():
                group.create_dataset(key, data=value)
        f.attrs.update(stage=STAGE, schema=SCHEMA, **attrs)
    return Path(path)


def read_localize_set(path: Path) -> LocalizeSet:
    """Load a file written by :func:`write_localize_set` (everything in memory)."""
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"localisation set {path} does not exist; make it with 'sfmkit build-localize-set'")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("stage") != STAGE:
                raise SfmkitError(
                    f"{path} is not an sfmkit localisation set (make it with 'sfmkit build-localize-set')"
                )
            if int(f.attrs.get("schema", 0)) != SCHEMA:
                raise SfmkitError(
                    f"{path} has localisation-set schema {f.attrs.get('schema')}, expected {SCHEMA}: "
                    "rebuild it with 'sfmkit build-localize-set'"
                )
            images = [n.decode() if isinstance(n, bytes) else str(n) for n in f["images"][()]]
            sources, targets = f["sources"][()], f["targets"][()]
            groups = {k: f["groups"][k][()] for k in f["groups"]}
            samples = {k: f["samples"][k][()] for k in f["samples"]}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise SfmkitError(f"cannot read localisation set {path}: {exc}") from exc
    return LocalizeSet(path, images, sources, targets, groups, samples, attrs)
