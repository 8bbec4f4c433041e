"""A surface mesh from a sparse or dense COLMAP model, for scenes without one (Strecha, photos).

Normals are estimated from each point's neighbours and turned towards the cameras that
observe the point; screened Poisson reconstruction (open3d) makes a watertight surface,
from which the vertices with low support (density below a quantile) and those outside the
points' bounding box are cut: Poisson closes the surface far from any data.
"""

from __future__ import annotations

import logging

import numpy as np
import pycolmap

from sfmkit.errors import SfmkitError
from sfmkit.labels.visibility import _open3d

logger = logging.getLogger(__name__)


def points_and_view_directions(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) points and the (P, 3) mean unit direction from each point towards its cameras."""
    centres = {i: img.projection_center() for i, img in rec.images.items() if img.has_pose}
    xyz, views = [], []
    for point in rec.points3D.values():
        dirs = np.array(
            [centres[e.image_id] - point.xyz for e in point.track.elements if e.image_id in centres]
        )
        if len(dirs) == 0:
            continue
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        xyz.append(point.xyz)
        views.append(dirs.mean(axis=0))
    return np.asarray(xyz, np.float64).reshape(-1, 3), np.asarray(views, np.float64).reshape(-1, 3)


def mesh_from_model(
    rec: pycolmap.Reconstruction, depth: int = 9, trim_quantile: float = 0.05, neighbours: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) vertices and (F, 3) faces of a Poisson surface through the model's points."""
    o3d = _open3d()
    xyz, views = points_and_view_directions(rec)
    if len(xyz) < 100:
        raise SfmkitError(f"the model has only {len(xyz)} 3D points: too few for a surface (need >= 100)")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(neighbours))
    normals = np.asarray(cloud.normals)
    flip = np.einsum("ij,ij->i", normals, views) < 0
    normals[flip] *= -1
    cloud.normals = o3d.utility.Vector3dVector(normals)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(cloud, depth=depth)
    density = np.asarray(density)
    mesh.remove_vertices_by_mask(density < np.quantile(density, trim_quantile))
    lo, hi = np.percentile(xyz, 0.5, axis=0), np.percentile(xyz, 99.5, axis=0)
    margin = 0.05 * (hi - lo)
    box = o3d.geometry.AxisAlignedBoundingBox(lo - margin, hi + margin)
    mesh = mesh.crop(box)
    mesh.remove_unreferenced_vertices()
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    logger.info("Poisson surface from %d points: %d triangles", len(xyz), len(faces))
    if len(faces) == 0:
        raise SfmkitError("Poisson reconstruction gave no triangles; try a lower --poisson-depth")
    return vertices, faces.astype(np.int64)


def write_mesh(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    o3d = _open3d()
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    o3d.io.write_triangle_mesh(str(path), mesh)
