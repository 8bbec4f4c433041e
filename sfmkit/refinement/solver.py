"""Featuremetric keypoint adjustment: a batched Levenberg-Marquardt over all tracks at once.

For every track with keypoints p_1 .. p_n (one fixed, its reference) and edges (u, v) from
verified matches, minimise

    sum over edges of rho(|| f_u(p_u) - f_v(p_v) ||^2),   subject to |p_u - p_u^0| <= radius,

where f_u is the bilinear interpolant of image u's feature window (:mod:`.dense`) and rho the
Cauchy loss rho(s) = c^2 log(1 + s / c^2) of the squared distance s (``loss_scale`` = c, a
distance). Tracks are independent, so each
iteration solves every track's normal equations (2n unknowns, the reference's held at zero) in
one batched call per track length; a track's step is kept only if it lowers that track's cost,
with its damping adapted as in Levenberg-Marquardt. Positions that reach the radius are
projected back onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sfmkit.refinement.dense import Windows
from sfmkit.refinement.tracks import Tracks


@dataclass(frozen=True)
class SolverConf:
    """Attributes:
    radius: largest move of a keypoint from where it started, in pixels of the pass's image.
    loss_scale: scale c of the Cauchy loss, a feature distance (unit features: 0 .. 2).
    iterations: most LM iterations.
    damping: initial LM damping (relative to the diagonal).
    tolerance: a track is done when a kept step lowers its cost by less than this fraction.
    """

    radius: float = 4.0
    loss_scale: float = 0.25
    iterations: int = 20
    damping: float = 1e-3
    tolerance: float = 1e-5


#: bounds of the Levenberg-Marquardt damping (shared with :mod:`.bundle`)
MIN_DAMPING, MAX_DAMPING = 1e-6, 1e6


def cauchy(s: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cauchy loss rho(s) and its derivative (the IRLS weight) for squared residuals s."""
    c2 = c * c
    return c2 * torch.log1p(s / c2), 1.0 / (1.0 + s / c2)


@dataclass
class _Problem:
    windows: Windows  # N windows of S x S pixels
    local_start: torch.Tensor  # (N, 2) initial positions in window pixels
    free: torch.Tensor  # (N,) bool
    edges: torch.Tensor  # (E, 2)
    edge_track: torch.Tensor  # (E,)
    track: torch.Tensor  # (N,)
    local: torch.Tensor  # (N,) index of a node within its track
    length: torch.Tensor  # (T,) nodes per track

    def track_cost(self, f: torch.Tensor, c: float) -> torch.Tensor:
        r = f[self.edges[:, 0]] - f[self.edges[:, 1]]
        rho, _ = cauchy((r * r).sum(1), c)
        return torch.zeros(len(self.length), dtype=rho.dtype).index_add_(0, self.edge_track, rho)


class _Group:
    """The tracks with ``n`` keypoints, and every index their normal equations need, computed
    once: each iteration only adds the edge blocks in and solves."""

    def __init__(
        self, n: int, tracks: torch.Tensor, edges: torch.Tensor, local: torch.Tensor, prob: _Problem
    ):
        self.n, self.dim = n, 2 * n
        slot = torch.full((len(prob.length),), -1, dtype=torch.long)
        slot[tracks] = torch.arange(len(tracks))
        self.count = len(tracks)
        self.edges = torch.nonzero(slot[prob.edge_track] >= 0)[:, 0]  # rows of the edge arrays
        t = slot[prob.edge_track[self.edges]]
        la, lb = local[edges[self.edges, 0]], local[edges[self.edges, 1]]
        two = torch.arange(2)
        dim = self.dim

        def block(li: torch.Tensor, lj: torch.Tensor) -> torch.Tensor:
            rows, cols = (2 * li)[:, None] + two, (2 * lj)[:, None] + two
            return (t[:, None, None] * dim * dim + rows[:, :, None] * dim + cols[:, None, :]).reshape(-1)

        self.hess_index = {
            (0, 0): block(la, la),
            (1, 1): block(lb, lb),
            (0, 1): block(la, lb),
            (1, 0): block(lb, la),
        }
        self.grad_index = [(t[:, None] * dim + (2 * li)[:, None] + two).reshape(-1) for li in (la, lb)]
        self.nodes = torch.nonzero(slot[prob.track] >= 0)[:, 0]
        self.node_slot = slot[prob.track[self.nodes]]
        self.node_local = local[self.nodes]
        fixed = ~prob.free[self.nodes]
        self.fixed_rows = torch.cat([2 * self.node_local[fixed] + k for k in (0, 1)])
        self.fixed_slot = torch.cat([self.node_slot[fixed]] * 2)
        self.tracks = tracks

    def steps(self, blocks: dict, grads: tuple, lam: torch.Tensor) -> torch.Tensor:
        """(nodes, 2) damped Gauss-Newton steps of this group's nodes."""
        hess = torch.zeros(self.count * self.dim * self.dim)
        grad = torch.zeros(self.count * self.dim)
        for key, index in self.hess_index.items():
            hess.index_add_(0, index, blocks[key][self.edges].reshape(-1))
        for end, index in enumerate(self.grad_index):
            grad.index_add_(0, index, grads[end][self.edges].reshape(-1))
        hess = hess.view(self.count, self.dim, self.dim)
        grad = grad.view(self.count, self.dim)
        # the reference keypoint is fixed: its two unknowns pinned to zero
        hess[self.fixed_slot, self.fixed_rows, :] = 0
        hess[self.fixed_slot, :, self.fixed_rows] = 0
        hess[self.fixed_slot, self.fixed_rows, self.fixed_rows] = 1
        grad[self.fixed_slot, self.fixed_rows] = 0
        diag = torch.diagonal(hess, dim1=1, dim2=2)
        damped = hess + torch.diag_embed(lam[self.tracks, None] * diag + 1e-9)
        delta = -torch.linalg.solve(damped, grad[..., None])[..., 0]
        return delta.view(self.count, self.n, 2)[self.node_slot, self.node_local]


def _gram(u: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(E, 2, 2) w * u^T v for (E, C, 2) Jacobians (written out: tiny batched matmuls are slow)."""
    ux, uy, vx, vy = u[..., 0], u[..., 1], v[..., 0], v[..., 1]
    out = torch.stack([(ux * vx).sum(1), (ux * vy).sum(1), (uy * vx).sum(1), (uy * vy).sum(1)], dim=1).view(
        -1, 2, 2
    )
    return out * w[:, None, None]


def _steps(
    prob: _Problem, groups: list[_Group], f: torch.Tensor, jac: torch.Tensor, lam: torch.Tensor, c: float
) -> torch.Tensor:
    """(N, 2) LM steps of every node (zero for references) from the current linearisation."""
    a, b = prob.edges[:, 0], prob.edges[:, 1]
    r = f[a] - f[b]
    _, w = cauchy((r * r).sum(1), c)
    ja, jb = jac[a], -jac[b]  # d r / d p_a, d r / d p_b: (E, C, 2)
    blocks = {(0, 0): _gram(ja, ja, w), (1, 1): _gram(jb, jb, w), (0, 1): _gram(ja, jb, w)}
    blocks[(1, 0)] = blocks[(0, 1)].transpose(1, 2)
    wr = (w[:, None] * r)[:, :, None]
    grads = ((ja * wr).sum(1), (jb * wr).sum(1))
    step = torch.zeros_like(prob.local_start)
    for group in groups:
        step[group.nodes] = group.steps(blocks, grads, lam)
    return step


def adjust_keypoints(
    tracks: Tracks, windows: Windows, origins: np.ndarray, start: np.ndarray, conf: SolverConf
) -> tuple[np.ndarray, dict[str, float]]:
    """Refined positions of every node of ``tracks``.

    Args:
        windows: the feature windows of the nodes (in node order).
        origins: (N, 2) top-left pixel (x, y) of each window in its refinement image.
        start: (N, 2) initial positions, refinement-image pixels (0-based centres).

    Returns:
        (N, 2) refined positions and statistics (initial and final cost, iterations).
    """
    start = np.asarray(start, np.float64).reshape(-1, 2)
    if len(tracks.track) == 0:
        return start, {"iterations": 0}
    size = windows.size
    if size < 2 * np.ceil(conf.radius) + 3:
        raise ValueError(f"windows of {size} px are too small for a radius of {conf.radius} px")
    track = torch.from_numpy(tracks.track)
    first = torch.zeros(tracks.num_tracks, dtype=torch.long)
    counts = torch.bincount(track, minlength=tracks.num_tracks)
    first[1:] = torch.cumsum(counts, 0)[:-1]
    edges = torch.from_numpy(tracks.edges)
    prob = _Problem(
        windows=windows,
        # small numbers (window pixels) keep float32 exact enough; moves are solved as offsets
        local_start=torch.from_numpy(start - np.asarray(origins, np.float64)).float(),
        free=torch.from_numpy(~tracks.reference),
        edges=edges,
        edge_track=track[edges[:, 0]],
        track=track,
        local=torch.arange(len(track)) - first[track],
        length=counts,
    )
    groups = [
        _Group(n, torch.nonzero(counts == n)[:, 0], edges, prob.local, prob)
        for n in torch.unique(counts).tolist()
    ]
    c = conf.loss_scale
    offset = torch.zeros_like(prob.local_start)  # (N, 2) move of every node
    lam = torch.full((tracks.num_tracks,), conf.damping)
    f, jac = windows.sample(prob.local_start)
    cost = prob.track_cost(f, c)
    initial = float(cost.sum())
    active = torch.ones(tracks.num_tracks, dtype=torch.bool)
    done = 0
    for done in range(1, conf.iterations + 1):  # noqa: B007 - the count is reported
        candidate = offset + _steps(prob, groups, f, jac, lam, c)
        norm = candidate.norm(dim=1, keepdim=True)
        candidate = torch.where(norm > conf.radius, candidate * (conf.radius / norm), candidate)
        f_new, jac_new = windows.sample(prob.local_start + candidate)
        new_cost = prob.track_cost(f_new, c)
        better = (new_cost < cost) & active
        accept = better[prob.track]
        offset = torch.where(accept[:, None], candidate, offset)
        f = torch.where(accept[:, None], f_new, f)
        jac = torch.where(accept[:, None, None], jac_new, jac)
        gain = (cost - new_cost) / cost.clamp_min(1e-12)
        cost = torch.where(better, new_cost, cost)
        lam = torch.where(better, lam / 10, lam * 10).clamp(MIN_DAMPING, MAX_DAMPING)
        # a track is done when a kept step gains too little, or when even the largest damping
        # finds no better step
        active &= ~((better & (gain < conf.tolerance)) | (~better & (lam >= MAX_DAMPING)))
        if not bool(active.any()):
            break
    refined = start + offset.double().numpy()
    refined[tracks.reference] = start[tracks.reference]
    return refined, {"cost_initial": initial, "cost_final": float(cost.sum()), "iterations": done}
