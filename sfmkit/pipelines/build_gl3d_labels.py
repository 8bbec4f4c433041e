"""``build-gl3d-labels``: pairwise overlap labels and masks from a model and a surface mesh.

Following GL3D (Shen et al. 2018, section 4.3): T(i), the mesh triangles camera i sees (ray
casting); P(i), the 3D tracks image i observes (from the model); the common track ratio CT,
the mesh overlap ratio MO and the combined CO; strong and weak positive pairs; and for
every ordered pair with CO > 0 the 32 x 32 mask of the pixels of i whose visible triangle j
also sees. With ``mesh_from_model`` the surface is a Poisson reconstruction of the model's
points (:mod:`sfmkit.labels.surface`), written next to the labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
import scipy.sparse as sp

from sfmkit.errors import SfmkitError
from sfmkit.io.images import read_image
from sfmkit.io.labels import Labels, write_gl3d_text, write_labels
from sfmkit.labels import overlap
from sfmkit.labels.plots import plot_overlap_masks
from sfmkit.labels.surface import mesh_from_model, write_mesh
from sfmkit.labels.visibility import MeshVisibility, load_mesh, mask_grid
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelsConf:
    """Attributes:
    mesh: a mesh file, or None with ``mesh_from_model``.
    mesh_from_model: build a Poisson surface from the model's points.
    poisson_depth, trim_quantile: the Poisson octree depth and the low-density cut.
    grid: rays on the longer image side for the masks.
    mask_size: side of the stored masks.
    thresholds: t_sfm and the strong / weak CO intervals.
    plot_pairs: pairs shown in the mask PNG (0: no PNG).
    """

    mesh: str | None = None
    mesh_from_model: bool = False
    poisson_depth: int = 9
    trim_quantile: float = 0.05
    grid: int = 128
    mask_size: int = 32
    thresholds: overlap.LabelThresholds = field(default_factory=overlap.LabelThresholds)
    plot_pairs: int = 3


@dataclass(frozen=True)
class LabelsResult:
    labels: Labels
    path: Path
    mesh_path: Path
    plot: Path | None
    counts: dict[str, int]
    timings: dict[str, float]


def _load_model(model_dir: Path) -> pycolmap.Reconstruction:
    model_dir = Path(model_dir)
    if not (model_dir / "images.bin").is_file() and not (model_dir / "images.txt").is_file():
        raise SfmkitError(f"{model_dir} is not a COLMAP model folder (no images.bin / images.txt)")
    try:
        return pycolmap.Reconstruction(model_dir)
    except Exception as exc:  # noqa: BLE001 - pycolmap raises various types
        raise SfmkitError(f"cannot read the COLMAP model in {model_dir}: {exc}") from exc


def _plot_choice(labels: Labels, count: int) -> list[tuple[int, int]]:
    """Pairs to show: the most and a median strong positive, then the best weak one, ..."""
    co = labels.combined
    strong = sorted((tuple(p) for p in labels.strong), key=lambda p: -co[p])
    weak = sorted((tuple(p) for p in labels.weak), key=lambda p: -co[p])
    picks: list[tuple[int, int]] = []
    for candidate in [strong[:1], strong[len(strong) // 2 : len(strong) // 2 + 1], weak[:1], strong, weak]:
        for p in candidate:
            if len(picks) < count and p not in picks:
                picks.append((int(p[0]), int(p[1])))
    return picks


def build_gl3d_labels(
    model_dir: Path,
    out_path: Path,
    conf: LabelsConf,
    images_dir: Path | None = None,
    gl3d_text: Path | None = None,
) -> LabelsResult:
    """Compute the labels of the registered images of a COLMAP model; write ``out_path``."""
    if conf.mesh is None and not conf.mesh_from_model:
        raise SfmkitError("give a surface: --mesh mesh.ply, or --mesh-from-model")
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SfmkitError(f"cannot create output folder {out_path.parent}: {exc.strerror}") from exc
    timings: dict[str, float] = {}
    start = time.perf_counter()
    rec = _load_model(model_dir)
    images = sorted((img for img in rec.images.values() if img.has_pose), key=lambda img: img.name)
    if len(images) < 2:
        raise SfmkitError(f"the model in {model_dir} has {len(images)} registered image(s); labels need 2+")
    names = [img.name for img in images]

    t = time.perf_counter()
    if conf.mesh_from_model:
        vertices, faces = mesh_from_model(rec, conf.poisson_depth, conf.trim_quantile)
        mesh_path = out_path.with_name(out_path.stem + ".mesh.ply")
        write_mesh(str(mesh_path), vertices, faces)
    else:
        mesh_path = Path(conf.mesh)  # type: ignore[arg-type]
        vertices, faces = load_mesh(mesh_path)
    timings["mesh"] = time.perf_counter() - t

    t = time.perf_counter()
    vis = MeshVisibility(vertices, faces)
    seen: list[np.ndarray] = []
    pixel_ids: list[np.ndarray] = []
    for img in track(images, "ray casting"):
        camera, pose = rec.camera(img.camera_id), img.cam_from_world()
        seen.append(np.flatnonzero(vis.visible_triangles(camera, pose)))
        pixel_ids.append(vis.pixel_triangles(camera, pose, mask_grid(camera, conf.grid)))
    timings["visibility"] = time.perf_counter() - t

    t = time.perf_counter()
    n = len(images)
    tri_incidence = sp.csr_matrix(
        (
            np.ones(sum(len(s) for s in seen)),
            (np.repeat(np.arange(n), [len(s) for s in seen]), np.concatenate(seen)),
        ),
        shape=(n, vis.num_triangles),
    )
    mo = overlap.set_overlap(tri_incidence)
    tracks = [np.array([p.point3D_id for p in img.points2D if p.has_point3D()], np.int64) for img in images]
    ct = overlap.set_overlap(overlap.track_incidence(tracks))
    th = conf.thresholds
    co = overlap.combined(ct, mo, th.t_sfm)
    masks: dict[tuple[int, int], np.ndarray] = {}
    member = np.zeros(vis.num_triangles, bool)
    for j in track(range(n), "masks"):
        member[:] = False
        member[seen[j]] = True
        for i in np.flatnonzero(co[:, j] > 0):
            if i != j:
                masks[(int(i), j)] = overlap.overlap_mask(pixel_ids[i], member, conf.mask_size)
    timings["ratios_masks"] = time.perf_counter() - t

    folder = Path(images_dir) if images_dir is not None else Path(model_dir).parent / "images"
    labels = Labels(
        names,
        ct,
        mo,
        co,
        overlap.positive_pairs(co, th.strong),
        overlap.positive_pairs(co, th.weak),
        masks,
        {
            "t_sfm": th.t_sfm,
            "strong": list(th.strong),
            "weak": list(th.weak),
            "mask_size": conf.mask_size,
            "grid": conf.grid,
            "mesh": str(mesh_path),
            "model": str(model_dir),
            "images": str(folder.resolve()) if folder.is_dir() else "",
            "triangles": vis.num_triangles,
        },
    )
    write_labels(out_path, labels)
    if gl3d_text is not None:
        write_gl3d_text(gl3d_text, labels)

    plot = None
    if conf.plot_pairs > 0:
        if folder.is_dir():
            rows = []
            for i, j in _plot_choice(labels, conf.plot_pairs):
                a, b = (read_image(folder / names[k], max_size=480).rgb for k in (i, j))
                caption = f"CT {ct[i, j]:.2f}  MO {mo[i, j]:.2f}  CO {co[i, j]:.2f}"
                rows.append((names[i], names[j], a, b, masks[(i, j)], masks[(j, i)], caption))
            if rows:
                plot = plot_overlap_masks(out_path.with_name(out_path.stem + "_masks.png"), rows)
        else:
            logger.warning("no image folder at %s: the mask figure is skipped (give --images)", folder)
    timings["total"] = time.perf_counter() - start
    counts = {
        "images": n,
        "triangles": vis.num_triangles,
        "strong_pairs": len(labels.strong),
        "weak_pairs": len(labels.weak),
        "masks": len(masks),
    }
    return LabelsResult(
        labels, out_path, mesh_path, plot, counts, {k: round(v, 3) for k, v in timings.items()}
    )
