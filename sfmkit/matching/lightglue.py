"""LightGlue (Lindenberger, Sarlin, Pollefeys, ICCV 2023) as a matcher preset
(``--matcher lightglue``) for the peer features of :mod:`sfmkit.features.peers`.

The network is kornia's with the published weights (:func:`sfmkit.models.peers.load_lightglue`).
What this module adds is speed on a CPU, where a LightGlue pair costs seconds:

- adaptive depth (stop once the layer's token confidence says the assignment is settled) and
  width (drop keypoints that are confidently unmatchable), LightGlue's own mechanisms, kept on;
- cross-attention through fused scaled-dot-product attention in both directions. On a CPU
  kornia's cross block builds the full (heads, M, N) similarity matrix, softmaxes it twice (one
  of them through a transposed copy) and multiplies twice; the fused kernel never builds it.
  Both compute the same messages;
- an optional keypoint cap at matching time (the ``max_keypoints`` best by detector score).

Matches are written in the layout of :mod:`sfmkit.matching.match` (``matches0``,
``matching_scores0`` = LightGlue's match probability).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.h5 import H5Reader
from sfmkit.models.peers import load_lightglue
from sfmkit.utils.cache import LRUCache


@dataclass(frozen=True)
class LightGlueConf:
    """Attributes:
    name: preset name.
    depth_confidence: early stopping (LightGlue's default 0.95; -1 runs every layer).
    width_confidence: point pruning (0.99; -1 keeps every point).
    filter_threshold: least match probability kept (0.1).
    max_keypoints: match only each image's N best keypoints by detector score (None: all).
    fused_attention: cross-attention through fused attention on every device (True) or
        kornia's reference cross block on a CPU (False, for comparison).
    """

    name: str = "lightglue"
    depth_confidence: float = 0.95
    width_confidence: float = 0.99
    filter_threshold: float = 0.1
    max_keypoints: int | None = None
    fused_attention: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.filter_threshold < 1:
            raise ConfigError("filter_threshold must be in (0, 1)")
        if self.max_keypoints is not None and self.max_keypoints < 1:
            raise ConfigError("max_keypoints must be >= 1 (or None for all)")


def _fused_cross_forward(
    self: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional cross-attention of a kornia ``CrossBlock`` through two fused attentions.

    The block's messages are ``softmax(s Q0 Q1^T) V1`` and ``softmax(s Q1 Q0^T) V0`` with
    ``s = head_dim^-1/2``: exactly scaled-dot-product attention with (Q0, Q1, V1) and
    (Q1, Q0, V0), whose default scale is that ``s``.
    """
    qk0, qk1 = self.to_qk(x0), self.to_qk(x1)
    v0, v1 = self.to_v(x0), self.to_v(x1)
    qk0, qk1, v0, v1 = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (qk0, qk1, v0, v1))
    mask10 = None if mask is None else mask.transpose(-1, -2)
    m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask)
    m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=mask10)
    if mask is not None:
        m0, m1 = m0.nan_to_num(), m1.nan_to_num()
    m0, m1 = (self.to_out(t.transpose(1, 2).flatten(start_dim=-2)) for t in (m0, m1))
    return x0 + self.ffn(torch.cat([x0, m0], -1)), x1 + self.ffn(torch.cat([x1, m1], -1))


class LightGlueMatcher:
    """LightGlue for one descriptor family; call it on two feature items."""

    def __init__(self, conf: LightGlueConf, family: str, device: torch.device) -> None:
        self.conf, self.device = conf, device
        self.net = load_lightglue(
            family,
            depth_confidence=conf.depth_confidence,
            width_confidence=conf.width_confidence,
            filter_threshold=conf.filter_threshold,
        ).to(device)
        if conf.fused_attention:
            for layer in self.net.transformers:
                layer.cross_attn.forward = types.MethodType(_fused_cross_forward, layer.cross_attn)

    @torch.inference_mode()
    def __call__(
        self, item0: dict[str, torch.Tensor], item1: dict[str, torch.Tensor]
    ) -> dict[str, np.ndarray]:
        """``matches0`` (N0,) int32 and ``matching_scores0`` (N0,) float16 for two items of
        :func:`load_item`."""
        keep0, keep1 = self._select(item0), self._select(item1)
        data = {
            f"image{i}": {
                "keypoints": item["keypoints"][keep][None],
                "descriptors": item["descriptors"][keep][None],
                "image_size": item["image_size"][None],
            }
            for i, (item, keep) in enumerate(((item0, keep0), (item1, keep1)))
        }
        out = self.net(data)
        n0 = item0["keypoints"].shape[0]
        matches0 = np.full(n0, -1, np.int32)
        scores0 = np.zeros(n0, np.float16)
        m = out["matches0"][0]
        valid = m > -1
        rows = keep0[valid].cpu().numpy()
        matches0[rows] = keep1[m[valid]].cpu().numpy()
        scores0[rows] = out["matching_scores0"][0][valid].float().cpu().numpy()
        return {"matches0": matches0, "matching_scores0": scores0}

    def _select(self, item: dict[str, torch.Tensor]) -> torch.Tensor:
        """Indices of the keypoints to match: all, or the ``max_keypoints`` best-scoring."""
        n = item["keypoints"].shape[0]
        cap = self.conf.max_keypoints
        if cap is None or n <= cap:
            return torch.arange(n, device=self.device)
        return item["scores"].topk(cap).indices.sort().values


def load_item(reader: H5Reader, name: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The keypoints (in the networks' convention: pixel centres at integers), descriptors
    (N, D), scores and image size (W, H) of one image, as LightGlue takes them. Keypoints stay in
    full-resolution pixels: LightGlue normalises them by the image size, so the scale cancels."""
    key = (name,)
    if not reader.has(key):
        raise SfmkitError(f"{reader.path} has no features for {name}; run extract first")

    def tensor(dataset: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(reader.array(key, dataset))).to(device)

    return {
        "keypoints": tensor("keypoints").float() - 0.5,
        "descriptors": tensor("descriptors").float().T.contiguous(),
        "scores": tensor("scores").float(),
        "image_size": tensor("image_size").float(),
    }


def item_cache(
    reader: H5Reader, device: torch.device, budget: int = 2 << 30
) -> LRUCache[dict[str, torch.Tensor]]:
    """Items of :func:`load_item` by image name, least recently used evicted past ``budget`` bytes."""
    return LRUCache(
        lambda name: load_item(reader, name, device),
        lambda item: sum(t.numel() * t.element_size() for t in item.values()),
        budget,
    )
