"""Cross-view localisation sets from rendered scenes (``sfmkit build-localize-set --cross-view``).

A same-image set (:mod:`sfmkit.localize.samples`) cuts the close-up from the image it is
searched in. Here the close-up is a crop of *another* view of the scene, so it shows the
surface from another direction, distance and zoom, under the same lighting. Its box in the
searched view is exact: every crop pixel is lifted to 3D with the crop view's depth map, the
points are projected into the searched view and kept where its own depth map sees them,
and the box is their bounding box.

For each ordered pair of views (searched view ``i``, close-up view ``j``) and factor ``f``:

1. a footprint side ``b`` (reduced pixels of view ``i`` reduced ``f`` times) is drawn as in a
   same-image set, and its centre where view ``i`` is textured and sees a surface;
2. the centre's 3D point must be seen by view ``j``; the close-up is the square of view ``j``
   around it whose side is ``b * f`` times the local scale between the views (focal length
   over depth), so its footprint in ``i`` is about ``b * f`` full-resolution pixels;
3. the crop must lie inside view ``j`` and at least ``min_visible`` of its pixels must be seen
   by view ``i``; the box aspect ratio must be under ``max_aspect``.

The sample's ``scale`` is the close-up's side over its footprint's side (sqrt of the box
area) in view ``i`` reduced ``f`` times: what a search at factor ``f`` must bridge.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.depth import read_depth
from sfmkit.io.images import read_image
from sfmkit.io.localize import write_localize_set
from sfmkit.io.strecha import StrechaCamera, read_scene
from sfmkit.localize.samples import check_factors, reduce_size, texture_weights
from sfmkit.models.ftfy import SOURCE_SIZE, TARGET_SIZE
from sfmkit.utils.config import conf_to_dict, conf_to_json
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

#: Points per side of the grid lifted from a close-up to find its box.
_GRID = 17


@dataclass(frozen=True)
class CrossViewConf:
    """Options of ``build-localize-set --cross-view``.

    Attributes:
        factors: down-sampling factors of the searched view.
        queries_per_pair: close-ups tried per ordered view pair and factor.
        box_min, box_max, min_fraction: the footprint side in reduced pixels, as in
            :class:`sfmkit.localize.samples.LocalizeSetConf`.
        context: source tile side over the box side.
        min_visible: fraction of the close-up's pixels the searched view must see.
        max_aspect: largest box aspect ratio kept (oblique views make long boxes).
        min_query: smallest close-up side, in pixels of its view.
        seed: random seed.
    """

    factors: tuple[int, ...] = (1, 2, 4, 6, 8, 10)
    queries_per_pair: int = 2
    box_min: int = 24
    box_max: int = 80
    min_fraction: float = 0.0
    context: float = 3.0
    min_visible: float = 0.9
    max_aspect: float = 1.5
    min_query: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_factors(self.factors)
        if self.queries_per_pair < 1 or self.box_min < 8 or (self.box_max and self.box_max < self.box_min):
            raise ConfigError("need queries_per_pair >= 1 and 8 <= box_min <= box_max (or box_max 0)")
        if self.context < 1.5 or not 0 < self.min_visible <= 1 or self.max_aspect < 1:
            raise ConfigError("need context >= 1.5, 0 < min_visible <= 1, max_aspect >= 1")


@dataclass
class View:
    """One rendered view: its image, camera and depth map."""

    name: str
    image: Image.Image
    camera: StrechaCamera
    depth: np.ndarray
    _reduced: dict[int, tuple[Image.Image, np.ndarray]] = field(default_factory=dict)

    def reduced(self, factor: int) -> tuple[Image.Image, np.ndarray]:
        """The image reduced ``factor`` times and its grey levels (cached)."""
        if factor not in self._reduced:
            size = reduce_size(self.image.size, factor)
            small = self.image if factor == 1 else self.image.resize(size, Image.Resampling.LANCZOS)
            self._reduced[factor] = (small, np.asarray(small.convert("L"), np.float32))
        return self._reduced[factor]

    def lift(self, uv: np.ndarray) -> np.ndarray:
        """World points of pixels ``uv`` (n, 2) (nearest pixel's depth; inf where no surface)."""
        h, w = self.depth.shape
        col = np.clip(np.floor(uv[:, 0]).astype(int), 0, w - 1)
        row = np.clip(np.floor(uv[:, 1]).astype(int), 0, h - 1)
        z = self.depth[row, col].astype(np.float64)
        rays = np.linalg.solve(self.camera.K, np.column_stack([uv, np.ones(len(uv))]).T).T
        with np.errstate(invalid="ignore"):
            return (rays * z[:, None]) @ self.camera.R_c2w.T + self.camera.C

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (n, 2) and camera-frame depths (n,) of world points."""
        cam = (xyz - self.camera.C) @ self.camera.R_c2w
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam @ self.camera.K.T)[:, :2] / cam[:, 2:3]
        return uv, cam[:, 2]

    def sees(self, xyz: np.ndarray, tolerance: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
        """Pixels of world points and whether this view sees them (inside, in front, and not
        occluded: its depth map agrees within ``tolerance`` relative)."""
        uv, z = self.project(xyz)
        h, w = self.depth.shape
        finite = np.isfinite(xyz).all(1) & np.isfinite(uv).all(1) & (z > 0)
        inside = finite & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        ok = np.zeros(len(xyz), bool)
        idx = np.flatnonzero(inside)
        col = np.clip(np.floor(uv[idx, 0]).astype(int), 0, w - 1)
        row = np.clip(np.floor(uv[idx, 1]).astype(int), 0, h - 1)
        ok[idx] = np.abs(self.depth[row, col] - z[idx]) < tolerance * z[idx]
        return uv, ok


def load_views(scene: Path) -> list[View]:
    """The views of a rendered scene folder (``sfmkit synth --depth``)."""
    scene = Path(scene)
    cameras = read_scene(scene)
    views = []
    for name, camera in cameras.items():
        path = scene / "images" / name
        image = Image.fromarray(read_image(path).rgb)
        if image.size != camera.size:
            raise SfmkitError(f"{path} is {image.size}, its camera says {camera.size}: re-render the scene")
        views.append(View(name, image, camera, read_depth(scene / "depth.h5", name)))
    if len(views) < 2:
        raise SfmkitError(f"{scene} has {len(views)} view(s); a cross-view set needs at least two")
    return views


def _focal(camera: StrechaCamera) -> float:
    return float(np.sqrt(camera.K[0, 0] * camera.K[1, 1]))


def cross_view_sample(
    wide: View, close: View, factor: int, conf: CrossViewConf, rng: np.random.Generator
) -> dict[str, Any] | None:
    """One close-up of ``close`` and its box in ``wide`` reduced ``factor`` times (module
    docs), or None when the try fails."""
    reduced = reduce_size(wide.image.size, factor)
    fits = int(min(reduced) / conf.context)
    if fits < conf.box_min:
        return None
    high = min(conf.box_max, fits) if conf.box_max else fits
    low = min(max(conf.box_min, int(conf.min_fraction * fits)), high)
    side = int(rng.integers(low, high + 1))
    # the footprint's centre: textured, and a surface (finite depth) in the wide view
    small, gray = wide.reduced(factor)
    weights = texture_weights(gray, side).ravel()
    weights = np.where(weights >= np.quantile(weights, 0.5), weights, 0.0) + 1e-9
    y0, x0 = divmod(int(rng.choice(len(weights), p=weights / weights.sum())), reduced[0] - side + 1)
    centre = (np.array([x0, y0]) + side / 2) * factor
    point = wide.lift(centre[None])
    if not np.isfinite(point).all():
        return None
    uv, seen = close.sees(point)
    if not seen[0]:
        return None
    z_wide = float(wide.project(point)[1][0])
    z_close = float(close.project(point)[1][0])
    ratio = (_focal(close.camera) / z_close) / (_focal(wide.camera) / z_wide)
    query_side = side * factor * ratio
    cw, ch = close.image.size
    q0 = uv[0] - query_side / 2
    query = np.array([q0[0], q0[1], q0[0] + query_side, q0[1] + query_side])
    if query_side < conf.min_query or query[0] < 0 or query[1] < 0 or query[2] > cw or query[3] > ch:
        return None
    grid = np.linspace(0.5, query_side - 0.5, _GRID)
    gx, gy = np.meshgrid(grid, grid)
    pixels = np.column_stack([gx.ravel(), gy.ravel()]) + query[:2]
    projected, visible = wide.sees(close.lift(pixels))
    if visible.mean() < conf.min_visible:
        return None
    pts = projected[visible]
    box_full = np.concatenate([pts.min(0), pts.max(0)])
    size = box_full[2:] - box_full[:2]
    if size.min() <= 0 or size.max() / size.min() > conf.max_aspect:
        return None
    return view_pair_sample(small, factor, box_full, close.image, query, conf.context, rng)


def view_pair_sample(
    reduced_wide: Image.Image,
    factor: int,
    box_full: np.ndarray,
    close: Image.Image,
    query: np.ndarray,
    context: float,
    rng: np.random.Generator,
) -> dict[str, Any] | None:
    """The stored form of one cross-view sample: the source tile (``context`` times the box,
    placed at random around it in the wide view reduced ``factor`` times), the target (the
    close-up ``query`` of ``close``) and their boxes; None when the box is too large for a tile."""
    reduced = reduced_wide.size
    box_full = np.clip(box_full, 0, [reduced[0] * factor, reduced[1] * factor] * 2)
    box = np.clip(box_full / factor, 0, [reduced[0], reduced[1]] * 2)
    footprint = float(np.sqrt(np.prod(box[2:] - box[:2])))
    tile = min(int(round(context * float((box[2:] - box[:2]).max()))), *reduced)
    if footprint <= 0 or float((box[2:] - box[:2]).max()) * 1.5 > tile:
        return None
    starts = []
    for axis in (0, 1):
        first = min(max(0, int(np.ceil(box[2 + axis])) - tile), reduced[axis] - tile)
        last = max(first, min(int(box[axis]), reduced[axis] - tile))
        starts.append(int(rng.integers(first, last + 1)))
    tx, ty = starts
    window = np.array([tx, ty, tx + tile, ty + tile], np.float64)
    source = reduced_wide.resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.LANCZOS, box=tuple(window))
    target = close.resize((TARGET_SIZE, TARGET_SIZE), Image.Resampling.LANCZOS, box=tuple(query))
    return {
        "source": np.asarray(source, np.uint8),
        "target": np.asarray(target, np.uint8),
        "window": window * factor,
        "box": ((box - np.array([tx, ty, tx, ty])) / tile).astype(np.float32),
        "box_full": box_full.astype(np.float32),
        "query_box": np.asarray(query, np.float32),
        "scale": float((query[2] - query[0]) / footprint),
    }


def build_cross_view_set(scene: Path, output: Path, conf: CrossViewConf = CrossViewConf()) -> dict[str, Any]:
    """Write a cross-view localisation set (layout in :mod:`sfmkit.io.localize`) from a rendered
    scene; returns counts."""
    scene, output = Path(scene), Path(output)
    start = time.perf_counter()
    views = load_views(scene)
    rng = np.random.default_rng(conf.seed)
    made: list[tuple[int, int, int, dict[str, Any]]] = []
    pairs = [(i, j) for i in range(len(views)) for j in range(len(views)) if i != j]
    for i, j in track(pairs, "build cross-view set"):
        for factor in conf.factors:
            for _ in range(conf.queries_per_pair):
                sample = cross_view_sample(views[i], views[j], int(factor), conf, rng)
                if sample is not None:
                    made.append((i, j, int(factor), sample))
    if not made:
        raise SfmkitError(
            f"no close-up of {scene} passed the visibility checks: the views may not overlap, or the "
            "images are too small for the factors (use smaller --factors or render larger --size)"
        )
    counts = write_view_pair_set(
        output, [v.name for v in views], made, conf, scene / "images", pairs=len(pairs)
    )
    logger.info("%s: %d cross-view samples from %d views of %s", output, counts["samples"], len(views), scene)
    return {**counts, "seconds": round(time.perf_counter() - start, 2), "config": conf_to_dict(conf)}


def write_view_pair_set(
    output: Path,
    names: list[str],
    made: list[tuple[int, int, int, dict[str, Any]]],
    conf: Any,
    images_dir: Path,
    **counts: Any,
) -> dict[str, Any]:
    """Write (searched view, close-up view, factor, :func:`view_pair_sample`) tuples as a
    localisation set, one group per sample; returns the counts."""
    n = len(made)
    groups = {
        "image": np.array([i for i, _, _, _ in made], np.int32),
        "factor": np.array([f for _, _, f, _ in made], np.int16),
        "window": np.array([s["window"] for *_, s in made], np.float32),
    }
    samples = {
        "group": np.arange(n, dtype=np.int32),
        "box": np.array([s["box"] for *_, s in made], np.float32),
        "box_full": np.array([s["box_full"] for *_, s in made], np.float32),
        "band": np.zeros(n, np.int8),
        "query_image": np.array([j for _, j, _, _ in made], np.int32),
        "query_box": np.array([s["query_box"] for *_, s in made], np.float32),
        "scale": np.array([s["scale"] for *_, s in made], np.float32),
    }
    per_factor = {str(f): int((groups["factor"] == f).sum()) for f in conf.factors}
    counts = {"images": len(names), **counts, "samples": n, "samples_per_factor": per_factor}
    write_localize_set(
        output,
        names,
        np.stack([s["source"] for *_, s in made]),
        np.stack([s["target"] for *_, s in made]),
        groups,
        samples,
        config=conf_to_json(conf),
        images_dir=str(Path(images_dir).resolve()),
        counts=json.dumps(counts),
        cross_view=True,
    )
    return counts
