"""The batched mask triplet loss of GL3D retrieval training (Shen et al. 2018, Eq. 7-8).

A batch holds B columns, each (anchor a, strong positive p, weak positive w) from its own
scene, so every image of the other columns is a negative of the column. With d the L2
distance of L2-normalised descriptors, per column:

* mask term: ``[D*(a, p) - beta]+`` where D* compares the descriptors max-pooled inside the
  overlap masks (the part of a that p sees, and vice versa);
* easy: ``[d(a, p) + alpha_easy - min(D-(a), D-(p))]+`` with D-(x) the distance of x to its
  nearest negative (the paper's min(D-, D'-));
* weak: ``[d(a, w) + alpha_weak - min(D-(a), D-(w))]+``: weak positives still beat negatives;
* hard: ``[d(a, p) + alpha_hard - d(a, w)]+``: strong positives come before weak ones.

Optionally each column also brings same-scene negatives (images of its scene that overlap none
of its three images): they join the pool every nearest negative D- is taken from, so the loss
also ranks a scene's unrelated views below its overlapping ones, which is what retrieval
inside one scene (every SfM use) needs; other scenes alone are easy negatives.

Loss = mean over columns of ``mask + lambda * (easy + lambda1 * weak + lambda2 * hard)``,
with beta = 0.1, lambda = 0.5, lambda1 = lambda2 = 1 and margins 1 / 0.5 / 0.5 by default.
This is sfmkit's reading of Eq. 8 (which pairs the easy, weak and hard terms compare is our
interpretation of the paper's description).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskTripletConf:
    beta: float = 0.1
    lam: float = 0.5
    lambda1: float = 1.0
    lambda2: float = 1.0
    margin_easy: float = 1.0
    margin_weak: float = 0.5
    margin_hard: float = 0.5


def _dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L2 distance of unit vectors, row-wise or as a matrix when shapes broadcast."""
    return torch.sqrt(torch.clamp(2.0 - 2.0 * (x * y).sum(-1), min=1e-12))


def batched_mask_triplet_loss(
    anchor: torch.Tensor,
    strong: torch.Tensor,
    weak: torch.Tensor,
    anchor_masked: torch.Tensor,
    strong_masked: torch.Tensor,
    conf: MaskTripletConf = MaskTripletConf(),
    negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch of B >= 2 columns.

    Args:
        anchor, strong, weak: (B, D) unit descriptors of each column's three images.
        anchor_masked, strong_masked: (B, D) unit descriptors pooled inside the overlap masks
            (anchor's cells that see the strong positive, and the reverse).
        negatives: (M, D) unit descriptors of same-scene negatives; each is a negative of
            every column (of its own column by construction, of the others as another scene).

    Returns:
        The scalar loss and the batch means of its terms (for logging).
    """
    b = anchor.shape[0]
    if b < 2:
        raise ValueError("the batched loss needs at least two columns (negatives come from other columns)")
    everything = torch.cat([anchor, strong, weak])  # (3B, D)
    column = torch.arange(b, device=anchor.device).repeat(3)

    def nearest_negative(x: torch.Tensor) -> torch.Tensor:
        dist = _dist(x[:, None, :], everything[None, :, :])  # (B, 3B)
        same = column[None, :] == torch.arange(b, device=x.device)[:, None]
        nearest = dist.masked_fill(same, float("inf")).min(dim=1).values
        if negatives is not None and len(negatives):
            nearest = torch.minimum(nearest, _dist(x[:, None, :], negatives[None, :, :]).min(dim=1).values)
        return nearest

    neg_a, neg_p, neg_w = nearest_negative(anchor), nearest_negative(strong), nearest_negative(weak)
    d_ap, d_aw = _dist(anchor, strong), _dist(anchor, weak)
    mask = torch.relu(_dist(anchor_masked, strong_masked) - conf.beta)
    easy = torch.relu(d_ap + conf.margin_easy - torch.minimum(neg_a, neg_p))
    weak_term = torch.relu(d_aw + conf.margin_weak - torch.minimum(neg_a, neg_w))
    hard = torch.relu(d_ap + conf.margin_hard - d_aw)
    per_column = mask + conf.lam * (easy + conf.lambda1 * weak_term + conf.lambda2 * hard)
    parts = {
        name: float(value.detach().mean())
        for name, value in (
            ("mask", mask),
            ("easy", easy),
            ("weak", weak_term),
            ("hard", hard),
            ("d_ap", d_ap),
            ("d_neg", neg_a),
        )
    }
    return per_column.mean(), parts
