"""Neighbouring-view localisation sets on a calibrated real scene (``sfmkit build-localize-set
SCENE --neighbour-views``), for the Strecha protocol of FTFY: a close-up cut from one view at
full resolution is searched in the next view, reduced f times.

A real scene has no depth maps, so the close-up's box in the other view comes from the
ground-truth cameras and a plane fit:

1. COLMAP SIFT on both views (longer side ``sift_size``), mutual nearest neighbours with
   Lowe's ratio, kept where the ground-truth epipolar geometry agrees (Sampson distance under
   ``max_epipolar`` full-resolution pixels), and triangulated with the true cameras;
2. for a close-up (a ``query_side`` square of the first view, centred on a random match), the
   points seen inside it: at least ``min_points``, of which a RANSAC plane must explain at
   least ``min_inliers`` (distance under ``plane_tolerance`` times their median depth);
3. a 17x17 grid of the close-up's pixels is intersected with the plane and projected into the
   other view; the bounding box (inside the image, aspect under 1.5) is the truth.

Facades, pavements and walls (fountain-P11, Herz-Jesus-P8) are close to planar at the scale of
a close-up; where the surface is not, the RANSAC check drops the close-up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.eval.matches import fundamental, sampson_errors
from sfmkit.features.sift import SiftConf, SiftExtractor
from sfmkit.io.images import read_image
from sfmkit.io.strecha import StrechaCamera, read_scene
from sfmkit.localize.crossview import view_pair_sample, write_view_pair_set
from sfmkit.localize.samples import check_factors, reduce_size
from sfmkit.matching.mutual_nn import mutual_nn
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

_GRID = 17


@dataclass(frozen=True)
class NeighbourViewConf:
    """Options of ``build-localize-set --neighbour-views`` (module docs).

    Attributes:
        factors: down-sampling factors of the searched view.
        query_side: close-up side in full-resolution pixels.
        queries_per_pair: close-ups per ordered view pair and factor.
        neighbours: views on each side (in name order) searched for each close-up's view.
        sift_size, ratio, max_epipolar: the matches that carry the 3D points.
        min_points, min_inliers, plane_tolerance: the plane fit of a close-up.
        max_aspect, context: the box's largest aspect ratio; the source tile over the box.
        seed: random seed.
    """

    factors: tuple[int, ...] = (2, 4, 6, 8)
    query_side: int = 512
    queries_per_pair: int = 1
    neighbours: int = 1
    sift_size: int = 1600
    ratio: float = 0.8
    max_epipolar: float = 2.0
    min_points: int = 12
    min_inliers: float = 0.7
    plane_tolerance: float = 0.01
    max_aspect: float = 1.5
    context: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_factors(self.factors)
        if self.query_side < 32 or self.queries_per_pair < 1 or self.neighbours < 1:
            raise ConfigError("need query_side >= 32, queries_per_pair >= 1 and neighbours >= 1")


def projection(camera: StrechaCamera) -> np.ndarray:
    """The 3x4 matrix K [R | t] of a camera (world to pixels)."""
    pose = camera.pose
    return camera.K @ np.column_stack([pose.rotation, pose.translation])


def triangulate(pa: np.ndarray, pb: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Linear (DLT) triangulation of correspondences (n, 2) with 3x4 projections."""
    rows = np.stack(
        [
            xa[:, :1] * pa[2] - pa[0],
            xa[:, 1:] * pa[2] - pa[1],
            xb[:, :1] * pb[2] - pb[0],
            xb[:, 1:] * pb[2] - pb[1],
        ],
        axis=1,
    )  # (n, 4, 4)
    _, _, vt = np.linalg.svd(rows)
    h = vt[:, -1]
    return h[:, :3] / h[:, 3:]


def fit_plane(
    points: np.ndarray, tolerance: float, rng: np.random.Generator, tries: int = 200
) -> tuple[np.ndarray, float, np.ndarray]:
    """RANSAC plane n.x = d (|n| = 1) through 3D points, refined on its inliers: (n, d, inliers)."""
    best = np.zeros(len(points), bool)
    for _ in range(tries):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        norm = np.linalg.norm(normal)
        if norm < 1e-12:
            continue
        normal /= norm
        inliers = np.abs(points @ normal - normal @ a) < tolerance
        if inliers.sum() > best.sum():
            best = inliers
    if best.sum() < 3:
        return np.array([0.0, 0.0, 1.0]), 0.0, best
    centre = points[best].mean(0)
    normal = np.linalg.svd(points[best] - centre)[2][-1]
    return normal, float(normal @ centre), np.abs(points @ normal - normal @ centre) < tolerance


def plane_transfer(
    pixels: np.ndarray, source: StrechaCamera, target: StrechaCamera, normal: np.ndarray, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``source`` carried through the plane n.x = offset into ``target``: (n, 2) and
    whether the plane point is in front of both cameras."""
    rays = np.linalg.solve(source.K, np.column_stack([pixels, np.ones(len(pixels))]).T).T @ source.R_c2w.T
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (offset - normal @ source.C) / (rays @ normal)
        world = source.C + rays * depth[:, None]
        cam = (world - target.C) @ target.R_c2w
        uv = (cam @ target.K.T)[:, :2] / cam[:, 2:3]
    return uv, (depth > 0) & (cam[:, 2] > 0)


def build_neighbour_view_set(
    scene: Path, output: Path, conf: NeighbourViewConf = NeighbourViewConf()
) -> dict[str, Any]:
    """Write a neighbouring-view localisation set of a Strecha-layout scene; returns counts."""
    scene, output = Path(scene), Path(output)
    start = time.perf_counter()
    cameras = read_scene(scene)
    names = sorted(cameras)
    if len(names) < 2:
        raise SfmkitError(f"{scene} has {len(names)} camera(s); neighbouring views need at least two")
    rng = np.random.default_rng(conf.seed)
    sift = SiftExtractor(SiftConf(max_num_features=8192))
    images: dict[str, Image.Image] = {}
    features: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
    for name in track(names, "SIFT of the views"):
        path = scene / "images" / name
        images[name] = Image.fromarray(read_image(path).rgb)
        found = sift(read_image(path, max_size=conf.sift_size))
        desc = torch.from_numpy(found["descriptors"].T.astype(np.float32))
        features[name] = (found["keypoints"].astype(np.float64), torch.nn.functional.normalize(desc, dim=1))
    reduced: dict[tuple[str, int], Image.Image] = {}
    made: list[tuple[int, int, int, dict[str, Any]]] = []
    pairs = [
        (names.index(a), names.index(b))
        for k, a in enumerate(names)
        for b in names[max(0, k - conf.neighbours) : k + conf.neighbours + 1]
        if b != a
    ]
    dropped = {"points": 0, "plane": 0, "box": 0}
    for j, i in track(pairs, "close-ups of neighbouring views"):
        close, wide = names[j], names[i]
        cam_c, cam_w = cameras[close], cameras[wide]
        (kc, dc), (kw, dw) = features[close], features[wide]
        i0, i1, _ = mutual_nn(dc, dw, ratio=conf.ratio)
        xc, xw = kc[i0.numpy()], kw[i1.numpy()]
        ok = sampson_errors(fundamental(cam_c, cam_w), xc, xw) < conf.max_epipolar
        xc, xw = xc[ok], xw[ok]
        points = triangulate(projection(cam_c), projection(cam_w), xc, xw)
        depth_c = (points - cam_c.C) @ cam_c.R_c2w[:, 2]
        for factor in conf.factors:
            for _ in range(conf.queries_per_pair):
                sample = _close_up(
                    (images[close], cam_c),
                    (images[wide], cam_w),
                    (xc, points, depth_c),
                    int(factor),
                    conf,
                    rng,
                    reduced,
                    wide,
                    dropped,
                )
                if sample is not None:
                    made.append((i, j, int(factor), sample))
    if not made:
        raise SfmkitError(
            f"no close-up of {scene} passed the plane fit ({dropped}); check that the images and "
            "gt_dense_cameras/ belong together"
        )
    counts = write_view_pair_set(
        output, names, made, conf, scene / "images", pairs=len(pairs), dropped=dropped
    )
    logger.info(
        "%s: %d neighbouring-view close-ups from %d views of %s", output, len(made), len(names), scene
    )
    return {**counts, "seconds": round(time.perf_counter() - start, 2), "config": conf_to_dict(conf)}


def _close_up(
    close: tuple[Image.Image, StrechaCamera],
    wide: tuple[Image.Image, StrechaCamera],
    seen: tuple[np.ndarray, np.ndarray, np.ndarray],
    factor: int,
    conf: NeighbourViewConf,
    rng: np.random.Generator,
    reduced: dict[tuple[str, int], Image.Image],
    wide_name: str,
    dropped: dict[str, int],
) -> dict[str, Any] | None:
    """One close-up of ``close`` and its plane-transferred box in ``wide`` (module docs);
    ``seen``: the matched pixels in ``close``, their 3D points and depths there."""
    (image_c, cam_c), (image_w, cam_w) = close, wide
    matched, points, depth = seen
    side = conf.query_side
    width, height = image_c.size
    inside_image = (
        (matched[:, 0] > side / 2)
        & (matched[:, 0] < width - side / 2)
        & (matched[:, 1] > side / 2)
        & (matched[:, 1] < height - side / 2)
        & (depth > 0)
    )
    if not inside_image.any():
        dropped["points"] += 1
        return None
    centre = matched[rng.choice(np.flatnonzero(inside_image))]
    query = np.concatenate([centre - side / 2, centre + side / 2])
    in_x = (matched[:, 0] >= query[0]) & (matched[:, 0] < query[2])
    within = np.flatnonzero(in_x & (matched[:, 1] >= query[1]) & (matched[:, 1] < query[3]) & (depth > 0))
    if len(within) < conf.min_points:
        dropped["points"] += 1
        return None
    normal, offset, inliers = fit_plane(
        points[within], conf.plane_tolerance * float(np.median(depth[within])), rng
    )
    if inliers.mean() < conf.min_inliers:
        dropped["plane"] += 1
        return None
    grid = np.linspace(0.5, side - 0.5, _GRID)
    gx, gy = np.meshgrid(grid, grid)
    uv, front = plane_transfer(
        np.column_stack([gx.ravel(), gy.ravel()]) + query[:2], cam_c, cam_w, normal, offset
    )
    w, h = image_w.size
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    if not inside.all():
        dropped["box"] += 1
        return None
    box_full = np.concatenate([uv.min(0), uv.max(0)])
    size = box_full[2:] - box_full[:2]
    if size.min() <= 0 or size.max() / size.min() > conf.max_aspect:
        dropped["box"] += 1
        return None
    key = (wide_name, factor)
    if key not in reduced:
        reduced[key] = image_w.resize(reduce_size(image_w.size, factor), Image.Resampling.LANCZOS)
    sample = view_pair_sample(reduced[key], factor, box_full, image_c, query, conf.context, rng)
    if sample is None:
        dropped["box"] += 1
    return sample
