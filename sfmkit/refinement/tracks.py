"""Tracks from verified matches, for featuremetric refinement.

A track is a set of keypoints, at most one per image, joined by verified matches. Tracks are
grown as a spanning forest over the match graph: matches are taken in order (strongest first
when scores are given) and two partial tracks are joined only if they share no image, so a
match that would put two keypoints of one image in one track is dropped. Every match whose
two keypoints end in the same track is kept as an edge of that track (cycles included): the
refinement makes the features agree along these edges.

Each track has a reference keypoint, the one with most edges (ties: the first image, then the
lowest keypoint index), which stays fixed so that the track cannot drift as a whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def groups(index: np.ndarray, count: int) -> list[np.ndarray]:
    """Row numbers of each value 0 .. count-1 of ``index`` (e.g. the nodes of each image), in
    their original order."""
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(count + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(count)]


@dataclass(frozen=True)
class Tracks:
    """Keypoints grouped into tracks.

    Attributes:
        image: (N,) int32 image index of each node (a keypoint in a track).
        keypoint: (N,) int64 keypoint index within its image.
        track: (N,) int64 track id of each node, 0 .. T-1; nodes are sorted by track.
        reference: (N,) bool, the fixed keypoint of each track.
        edges: (E, 2) int64 indices into the node arrays: two nodes of one track joined by a
            verified match (each match once).
    """

    image: np.ndarray
    keypoint: np.ndarray
    track: np.ndarray
    reference: np.ndarray
    edges: np.ndarray

    @property
    def num_tracks(self) -> int:
        return int(self.track[-1]) + 1 if len(self.track) else 0

    def lengths(self) -> np.ndarray:
        """(T,) number of keypoints per track."""
        return np.bincount(self.track, minlength=self.num_tracks)


class _UnionFind:
    """Disjoint sets of nodes, each set remembering the images it holds."""

    def __init__(self, images: np.ndarray) -> None:
        self.parent = np.arange(len(images))
        self.members: dict[int, set[int]] = {}
        self.images = images

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, int(self.parent[x])
        return root

    def image_set(self, root: int) -> set[int]:
        return self.members.setdefault(root, {int(self.images[root])})

    def union_if_disjoint(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b`` unless they hold a common image; True if joined
        (or already one set)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        sa, sb = self.image_set(ra), self.image_set(rb)
        if sa & sb:
            return False
        if len(sa) < len(sb):
            ra, rb, sa, sb = rb, ra, sb, sa
        self.parent[rb] = ra
        sa |= sb
        del self.members[rb]
        return True


def build_tracks(matches: Iterable[tuple[int, int, np.ndarray, np.ndarray | None]]) -> Tracks:
    """Tracks from per-pair verified matches.

    Args:
        matches: (image index a, image index b, (M, 2) keypoint indices into a and b, optional
            (M,) scores, higher = stronger) per image pair.

    Returns:
        :class:`Tracks` of every track with at least two keypoints.
    """
    ends, strength = [], []
    for a, b, m, scores in matches:
        if len(m) == 0:
            continue
        m = np.asarray(m, np.int64)
        ends.append(np.stack([np.full(len(m), a), m[:, 0], np.full(len(m), b), m[:, 1]], axis=1))
        strength.append(np.zeros(len(m)) if scores is None else np.asarray(scores, np.float64))
    if not ends:
        empty = np.zeros(0, np.int64)
        return Tracks(empty.astype(np.int32), empty, empty, empty.astype(bool), np.zeros((0, 2), np.int64))
    ends_all = np.concatenate(ends)
    # nodes: unique (image, keypoint)
    keys = np.concatenate([ends_all[:, :2], ends_all[:, 2:]])
    code = keys[:, 0] * (keys[:, 1].max() + 1) + keys[:, 1]
    uniq, inverse = np.unique(code, return_inverse=True)
    node_image = np.empty(len(uniq), np.int64)
    node_kp = np.empty(len(uniq), np.int64)
    node_image[inverse] = keys[:, 0]
    node_kp[inverse] = keys[:, 1]
    e = inverse.reshape(2, -1).T  # (M, 2) node indices
    order = np.argsort(-np.concatenate(strength), kind="stable")
    uf = _UnionFind(node_image)
    for i in order:
        uf.union_if_disjoint(int(e[i, 0]), int(e[i, 1]))
    roots = np.array([uf.find(i) for i in range(len(uniq))])
    same = roots[e[:, 0]] == roots[e[:, 1]]
    e = e[same]
    size = np.bincount(roots, minlength=len(uniq))
    keep = size[roots] >= 2
    # renumber: tracks by root, nodes sorted by (track, image, keypoint)
    track_of_root = np.full(len(uniq), -1, np.int64)
    kept_roots = np.unique(roots[keep])
    track_of_root[kept_roots] = np.arange(len(kept_roots))
    nodes = np.flatnonzero(keep)
    nodes = nodes[np.lexsort((node_kp[nodes], node_image[nodes], track_of_root[roots[nodes]]))]
    new_index = np.full(len(uniq), -1, np.int64)
    new_index[nodes] = np.arange(len(nodes))
    edges = new_index[e]
    edges = np.unique(np.sort(edges, axis=1), axis=0)  # a match stored in both orders counts once
    track = track_of_root[roots[nodes]]
    degree = np.bincount(edges.ravel(), minlength=len(nodes))
    # reference: most edges; ties -> first node of the track in (image, keypoint) order
    rank = np.lexsort((np.arange(len(nodes)), -degree, track))
    first = np.ones(len(rank), bool)
    first[1:] = track[rank][1:] != track[rank][:-1]
    reference = np.zeros(len(nodes), bool)
    reference[rank[first]] = True
    return Tracks(node_image[nodes].astype(np.int32), node_kp[nodes], track, reference, edges)
