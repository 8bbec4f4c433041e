"""Featuremetric bundle adjustment: after mapping, move 3D points and camera poses so that the
dense features at each point's projections agree with the point's reference feature.

The second half of Lindenberger et al., "Pixel-Perfect Structure-from-Motion with Featuremetric
Refinement" (ICCV 2021). COLMAP's bundle adjustment minimises the distance between projections
and keypoints; here the keypoints only define, once, what each 3D point looks like: its
reference feature is the robust (Cauchy-weighted) mean of the features at its observations'
keypoints. Then, with the intrinsics held fixed, the cost

    sum over observations (i, j) of rho(|| f_i(pi_i(X_j)) - ref_j ||^2)

is minimised, where f_i is the bilinear interpolant of image i's feature window around the
observation (:mod:`.dense`, full resolution) and rho the Cauchy loss. Blocks alternate, each
solved by batched Levenberg-Marquardt: every 3D point given the poses (3 unknowns each, all
points at once), then every pose given the points (6 unknowns each). Alternation fixes the
gauge without choosing a reference camera, and each block's normal equations are tiny.
A projection further than ``radius`` pixels from where it started (the window's reach) costs
as much as the worst feature disagreement; a step that does not lower its block's cost (a
point's, or an image's) is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.colmap_model import MODEL_FILES, write_model
from sfmkit.io.h5 import check_writable_dir
from sfmkit.io.images import image_fingerprint, read_image
from sfmkit.refinement.dense import WindowFeatures, Windows, window_origins
from sfmkit.refinement.solver import MAX_DAMPING, MIN_DAMPING, cauchy
from sfmkit.refinement.tracks import groups
from sfmkit.utils.config import conf_to_dict, same_config
from sfmkit.utils.files import write_text_atomic
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleConf:
    """Attributes:
    window: side of the ``intensity`` (normalised cross-correlation) window. 11 with a loss
        scale of 0.5 had the lowest camera error over both Strecha scenes with known
        intrinsics of the settings tried (benchmarks/README.md).
    radius: largest move of a projection from where mapping left it, full-resolution pixels.
    loss_scale: scale c of the Cauchy loss, a feature distance (unit features: 0 .. 2).
    rounds: alternations of the point block and the pose block.
    iterations: Levenberg-Marquardt iterations per block and round.
    poses: adjust the poses too (otherwise the points only).
    """

    window: int = 11
    radius: float = 3.0
    loss_scale: float = 0.5
    rounds: int = 3
    iterations: int = 2
    poses: bool = True

    def __post_init__(self) -> None:
        if self.window < 3 or self.window % 2 == 0:
            raise ConfigError("the bundle-adjustment window must be an odd size >= 3")
        if self.radius <= 0 or self.loss_scale <= 0 or self.rounds < 1 or self.iterations < 1:
            raise ConfigError(
                "bundle adjustment needs radius > 0, loss_scale > 0, rounds >= 1, iterations >= 1"
            )


#: camera models :func:`project` knows, and their number of parameters
MODELS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}
#: an image whose pose fewer valid observations constrain keeps its pose
MIN_POSE_OBSERVATIONS = 6


def project(model: str, params: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
    """(n, 2) image coordinates (COLMAP's convention: pixel centres at +0.5) of camera-frame
    points ``xc`` (n, 3) through cameras of ``model`` with per-row ``params`` (n, k)."""
    if model not in MODELS:
        raise SfmkitError(
            f"featuremetric bundle adjustment does not know the {model} camera model; use one of "
            f"{', '.join(MODELS)} (--camera-model)"
        )
    x, y = xc[:, 0] / xc[:, 2], xc[:, 1] / xc[:, 2]
    p = params[:, : MODELS[model]].unbind(1)
    if model in ("SIMPLE_PINHOLE", "PINHOLE"):
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if model == "SIMPLE_PINHOLE" else p[:4]
        return torch.stack([fx * x + cx, fy * y + cy], 1)
    r2 = x * x + y * y
    if model == "SIMPLE_RADIAL":
        f, cx, cy, k = p
        d = 1 + k * r2
        return torch.stack([f * x * d + cx, f * y * d + cy], 1)
    if model == "RADIAL":
        f, cx, cy, k1, k2 = p
        d = 1 + r2 * (k1 + k2 * r2)
        return torch.stack([f * x * d + cx, f * y * d + cy], 1)
    if model == "OPENCV":
        fx, fy, cx, cy, k1, k2, p1, p2 = p
        d = 1 + r2 * (k1 + k2 * r2)
        xd = x * d + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * d + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return torch.stack([fx * xd + cx, fy * yd + cy], 1)
    raise AssertionError(model)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) cross-product matrices of (n, 3) vectors."""
    z = torch.zeros_like(v[:, 0])
    return torch.stack([z, -v[:, 2], v[:, 1], v[:, 2], z, -v[:, 0], -v[:, 1], v[:, 0], z], dim=1).view(
        -1, 3, 3
    )


def _rodrigues(w: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) rotations exp([w]x) of (n, 3) rotation vectors."""
    return torch.linalg.matrix_exp(_skew(w))


class _Problem:
    """The observations of one reconstruction, their windows and the current estimate."""

    def __init__(self, rec: pycolmap.Reconstruction, image_dir: Path, conf: BundleConf) -> None:
        self.conf = conf
        self.image_ids = sorted(int(i) for i in rec.reg_image_ids())
        slot = {iid: k for k, iid in enumerate(self.image_ids)}
        self.point_ids = sorted(int(p) for p in rec.points3D)
        rows: list[tuple[int, int, float, float]] = []
        for k, pid in enumerate(self.point_ids):
            for el in rec.points3D[pid].track.elements:
                xy = rec.images[el.image_id].points2D[el.point2D_idx].xy
                rows.append((k, slot[el.image_id], float(xy[0]), float(xy[1])))
        obs = np.array(rows, np.float64).reshape(-1, 4)
        self.point = torch.from_numpy(obs[:, 0].astype(np.int64))
        self.image = torch.from_numpy(obs[:, 1].astype(np.int64))
        self.keypoint = torch.from_numpy(obs[:, 2:])
        self.X = torch.tensor(np.array([rec.points3D[p].xyz for p in self.point_ids]).reshape(-1, 3))
        poses = [rec.images[i].cam_from_world() for i in self.image_ids]
        self.R = torch.tensor(np.array([p.rotation.matrix() for p in poses]).reshape(-1, 3, 3))
        self.t = torch.tensor(np.array([p.translation for p in poses]).reshape(-1, 3))
        cameras = [rec.images[i].camera for i in self.image_ids]
        self.models = sorted({c.model.name for c in cameras})
        width = max(len(c.params) for c in cameras)
        params = np.zeros((len(cameras), width))
        for k, c in enumerate(cameras):
            params[k, : len(c.params)] = c.params
        self.params = torch.from_numpy(params)
        self.model_of = np.array([self.models.index(c.model.name) for c in cameras])
        self.names = [rec.images[i].name for i in self.image_ids]
        self.sizes = [(c.width, c.height) for c in cameras]
        self.start, _ = self.projections(self.X, self.R, self.t)
        self.half = int(np.ceil(conf.radius)) + 1
        self.windows, self.origins = self._windows(Path(image_dir))
        self.ref, self.valid = self._references()

    def projections(
        self, X: torch.Tensor, R: torch.Tensor, t: torch.Tensor, jacobian: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """(O, 2) projections of every observation; with ``jacobian``, also d uv / d xc
        (O, 2, 3) and the camera-frame points xc (O, 3)."""
        xc = torch.einsum("oij,oj->oi", R[self.image], X[self.point]) + t[self.image]
        xc = xc.detach().requires_grad_(jacobian)
        per_obs_model = torch.from_numpy(self.model_of)[self.image]
        with torch.enable_grad():
            parts = []
            for m, model in enumerate(self.models):
                sel = torch.nonzero(per_obs_model == m)[:, 0]
                parts.append((sel, project(model, self.params[self.image[sel]], xc[sel])))
            out = torch.zeros(len(xc), 2, dtype=xc.dtype)
            for sel, value in parts:
                out = out.index_copy(0, sel, value)
            if not jacobian:
                return out.detach(), None
            du = torch.autograd.grad(out[:, 0].sum(), xc, retain_graph=True)[0]
            dv = torch.autograd.grad(out[:, 1].sum(), xc)[0]
        uv = out.detach()
        return uv, (torch.stack([du, dv], 1), xc.detach())

    def _windows(self, image_dir: Path) -> tuple[Windows, torch.Tensor]:
        features = WindowFeatures("intensity", None, self.conf.window)
        windows = features.empty(len(self.point), self.half)
        centres = (self.start - 0.5).numpy()  # 0-based pixel-centre coordinates
        by_image = groups(self.image.numpy(), len(self.names))
        for k, name in enumerate(track(self.names, "featuremetric BA: windows")):
            sel = torch.from_numpy(by_image[k])
            loaded = read_image(image_dir / name)
            if tuple(loaded.size) != tuple(self.sizes[k]):
                raise SfmkitError(
                    f"{image_dir / name} is {loaded.size[0]}x{loaded.size[1]}, but its model camera is "
                    f"{self.sizes[k][0]}x{self.sizes[k][1]}; pass the image folder the model was made from"
                )
            windows[sel] = features(loaded.rgb, centres[sel.numpy()], self.half)
        return windows, torch.from_numpy(window_origins(centres, self.half)).double()

    def sample(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (O, C) and their derivatives (O, C, 2), float32, at image coordinates
        ``uv`` (float64: the geometry is solved in double precision, the features are not)."""
        return self.windows.sample((uv - 0.5 - self.origins).float())

    def _references(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each point's reference feature (P, C), and which observations take part (O,): those
        whose keypoint lies inside their window, of points with two or more such."""
        reach = self.half - 0.5
        inside = ((self.keypoint - self.start).abs() <= reach).all(1)
        f, _ = self.sample(self.keypoint)
        count = torch.zeros(len(self.X), dtype=torch.long).index_add_(0, self.point, inside.long())
        valid = inside & (count[self.point] >= 2)
        c = self.conf.loss_scale
        weight = valid.float()
        ref = torch.zeros(len(self.X), f.shape[1])
        for _ in range(4):  # Cauchy-weighted mean (IRLS)
            num = torch.zeros_like(ref).index_add_(0, self.point, f * weight[:, None])
            den = torch.zeros(len(self.X)).index_add_(0, self.point, weight)
            ref = num / den.clamp_min(1e-12)[:, None]
            _, w = cauchy(((f - ref[self.point]) ** 2).sum(1), c)
            weight = w * valid
        return ref, valid

    def residuals(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residuals (O, C), their derivatives w.r.t. uv (O, C, 2), and the robust cost of every
        observation (O,): zero for observations that do not take part, and the largest cost
        two unit features can have for a projection further than ``radius`` from where it
        started (its window cannot tell; leaving it must not pay)."""
        f, jac = self.sample(uv)
        r = f - self.ref[self.point]
        c = self.conf.loss_scale
        rho, _ = cauchy((r * r).sum(1).double(), c)
        worst, _ = cauchy(torch.tensor(4.0, dtype=rho.dtype), c)
        return r, jac, torch.where(self.inside(uv), rho, worst) * self.valid

    def inside(self, uv: torch.Tensor) -> torch.Tensor:
        """(O,) whether each projection is within ``radius`` of where it started."""
        return (uv - self.start).norm(dim=1) <= self.conf.radius


def _sum_by(index: torch.Tensor, values: torch.Tensor, count: int) -> torch.Tensor:
    return torch.zeros((count, *values.shape[1:]), dtype=values.dtype).index_add_(0, index, values)


def _lm_block(
    prob: _Problem,
    block: str,
    lam: torch.Tensor,
    iterations: int,
) -> None:
    """``iterations`` Levenberg-Marquardt steps of every point (``block="points"``) or every
    pose (``"poses"``) at once, each accepted only if it lowers its own cost."""
    owner = prob.point if block == "points" else prob.image
    count = len(prob.X) if block == "points" else len(prob.R)
    c = prob.conf.loss_scale
    # a pose needs enough observations (a point has two or more valid ones by construction)
    valid_count = _sum_by(owner, prob.valid.long(), count)
    movable = valid_count >= (2 if block == "points" else MIN_POSE_OBSERVATIONS)
    for _ in range(iterations):
        uv, extra = prob.projections(prob.X, prob.R, prob.t, jacobian=True)
        assert extra is not None
        duv, xc = extra
        r, jac, rho = prob.residuals(uv)
        cost = _sum_by(owner, rho, count)
        _, w = cauchy((r * r).sum(1), c)
        w = w * prob.valid * prob.inside(uv)  # a projection off its window has no gradient
        if block == "points":
            dxc = prob.R[prob.image]  # d xc / d X
        else:  # left perturbation: xc' = exp(w) xc + dt
            dxc = torch.cat([-_skew(xc), torch.eye(3, dtype=xc.dtype).expand(len(xc), 3, 3)], dim=2)
        # the C feature channels are summed out first: J^T J = A^T (Juv^T Juv) A with
        # A = d uv / d params (O, 2, dim), so no (O, C, dim) Jacobian is formed
        a = duv @ dxc
        gram = torch.einsum("ocu,ocv->ouv", jac, jac).double() * w[:, None, None]
        hess = _sum_by(owner, a.transpose(1, 2) @ gram @ a, count)
        juv_r = torch.einsum("ocu,oc->ou", jac, r).double() * w[:, None]
        grad = _sum_by(owner, (a.transpose(1, 2) @ juv_r[..., None])[..., 0], count)
        diag = torch.diagonal(hess, dim1=1, dim2=2)
        damped = hess + torch.diag_embed(lam[:, None] * diag + 1e-12)
        delta = -torch.linalg.solve(damped, grad[..., None])[..., 0]
        if block == "points":
            X, R, t = prob.X + delta, prob.R, prob.t
        else:
            rot = _rodrigues(delta[:, :3])
            X, R = prob.X, rot @ prob.R
            t = torch.einsum("nij,nj->ni", rot, prob.t) + delta[:, 3:]
        new_uv, _ = prob.projections(X, R, t)
        _, _, new_rho = prob.residuals(new_uv)
        new_cost = _sum_by(owner, new_rho, count)
        better = (new_cost < cost) & (grad.abs().sum(1) > 0) & movable
        if block == "points":
            prob.X = torch.where(better[:, None], X, prob.X)
        else:
            prob.R = torch.where(better[:, None, None], R, prob.R)
            prob.t = torch.where(better[:, None], t, prob.t)
        lam.copy_(torch.where(better, lam / 10, lam * 10).clamp(MIN_DAMPING, MAX_DAMPING))


def featuremetric_ba(rec: pycolmap.Reconstruction, image_dir: Path, conf: BundleConf) -> dict[str, Any]:
    """Adjust ``rec``'s points (and poses) in place; returns a summary (costs, moves, seconds)."""
    start = time.perf_counter()
    if rec.num_points3D() == 0 or rec.num_reg_images() == 0:
        return {"observations": 0, "points": 0, "images": rec.num_reg_images(), "seconds": 0.0}
    prob = _Problem(rec, Path(image_dir), conf)
    t_windows = time.perf_counter() - start
    _, _, rho = prob.residuals(prob.start)
    initial = float(rho.sum())
    X0, centres0 = prob.X.clone(), _centres(prob.R, prob.t)
    lam_points = torch.full((len(prob.X),), 1e-3, dtype=torch.float64)
    lam_poses = torch.full((len(prob.R),), 1e-3, dtype=torch.float64)
    for _ in track(range(conf.rounds), "featuremetric BA"):
        _lm_block(prob, "points", lam_points, conf.iterations)
        if conf.poses:
            _lm_block(prob, "poses", lam_poses, conf.iterations)
    uv, _ = prob.projections(prob.X, prob.R, prob.t)
    _, _, rho = prob.residuals(uv)
    _write_back(rec, prob)
    moved = (uv - prob.start).norm(dim=1)[prob.valid]
    summary = {
        "observations": int(prob.valid.sum()),
        "points": int(torch.unique(prob.point[prob.valid]).numel()),
        "images": len(prob.image_ids),
        "cost_initial": round(initial, 3),
        "cost_final": round(float(rho.sum()), 3),
        "projection_shift_px": {
            "median": float(moved.median()) if len(moved) else 0.0,
            "p90": float(np.percentile(moved.numpy(), 90)) if len(moved) else 0.0,
        },
        "point_move_median": float((prob.X - X0).norm(dim=1).median()) if len(X0) else 0.0,
        "centre_move_max": float((_centres(prob.R, prob.t) - centres0).norm(dim=1).max()),
        "seconds_windows": round(t_windows, 3),
        "seconds": round(time.perf_counter() - start, 3),
    }
    logger.info("featuremetric bundle adjustment: %s", summary)
    return summary


def _centres(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return -torch.einsum("nji,nj->ni", R, t)


def _write_back(rec: pycolmap.Reconstruction, prob: _Problem) -> None:
    for k, pid in enumerate(prob.point_ids):
        rec.points3D[pid].xyz = prob.X[k].numpy()
    for k, iid in enumerate(prob.image_ids):
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(prob.R[k].numpy()), prob.t[k].numpy())
        image = rec.images[iid]
        rec.frames[image.frame_id].set_cam_from_world(image.camera_id, pose)
    rec.update_point_3d_errors()  # the stored errors (reprojection statistics) follow the new geometry


#: The stage's record of a finished adjustment: config, digest of the input model, statistics.
RUN_FILE = "ba-run.json"


@dataclass(frozen=True)
class BundleResult:
    """Attributes:
    path: folder of the adjusted model.
    reconstruction: the adjusted model.
    stats: the adjustment's summary (:func:`featuremetric_ba`).
    """

    path: Path
    reconstruction: pycolmap.Reconstruction
    stats: dict[str, Any]


def _inputs_digest(model_dir: Path, rec: pycolmap.Reconstruction, images: Path) -> str:
    """SHA-1 of the model's files and of the fingerprints of its registered images."""
    digest = hashlib.sha1()
    for name in MODEL_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    for name in sorted(rec.images[i].name for i in rec.reg_image_ids()):
        path = images / name
        if not path.is_file():
            raise SfmkitError(
                f"{name}, an image of the model in {model_dir}, is not in {images}; pass the image "
                "folder the model was made from"
            )
        digest.update(name.encode() + b"\0" + image_fingerprint(path).encode())
    return digest.hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    """The record of a finished adjustment; None when there is none or it is unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def bundle_adjust(
    conf: BundleConf, model_dir: Path, images: Path, out_dir: Path, *, overwrite: bool = False
) -> BundleResult:
    """The ``bundle-adjust`` stage: the model of ``model_dir`` (made by ``sfmkit map``)
    adjusted by :func:`featuremetric_ba`, written to ``out_dir`` as COLMAP binary files with
    ``model.ply`` and :data:`RUN_FILE`. A finished adjustment of the same model and images
    with the same options is reused; one made with other options is refused unless
    ``overwrite``; an unreadable record is recomputed."""
    model_dir, out_dir, images = Path(model_dir), Path(out_dir), Path(images)
    if not all((model_dir / f).is_file() for f in ("cameras.bin", "images.bin", "points3D.bin")):
        raise SfmkitError(
            f"{model_dir} holds no COLMAP model (cameras.bin, images.bin, points3D.bin); "
            "pass the output folder of `sfmkit map` (reconstruct: OUT/sfm)"
        )
    if model_dir.resolve() == out_dir.resolve():
        raise SfmkitError(f"write the adjusted model to another folder than its input {model_dir} (-o)")
    check_writable_dir(out_dir)
    config = conf_to_dict(conf)
    rec = pycolmap.Reconstruction(model_dir)
    digest = _inputs_digest(model_dir, rec, images)
    record_path = out_dir / RUN_FILE
    previous = _read_record(record_path)
    if previous is not None:
        same = same_config(
            f"{out_dir} holds an adjusted model", previous.get("config", {}), config, overwrite=overwrite
        )
        if same and previous.get("inputs_sha1") == digest and not overwrite:
            logger.info("%s: same model and options as the adjustment already there; reusing it", out_dir)
            return BundleResult(out_dir, pycolmap.Reconstruction(out_dir), previous.get("stats", {}))
    record_path.unlink(missing_ok=True)
    stats = featuremetric_ba(rec, Path(images), conf)
    write_model(rec, out_dir)
    record = {"config": config, "model": str(model_dir.resolve()), "inputs_sha1": digest, "stats": stats}
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
    return BundleResult(out_dir, rec, stats)
