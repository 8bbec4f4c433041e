"""Searching a close-up in a wide image: FTFY on source tiles, and the triplet sliding window.

On one tile (a 256x256 source) FTFY predicts boxes with confidences (:func:`ftfy_on_tiles`).
The triplet baseline embeds the target and every window of the target's footprint, at a
stride, and ranks the windows by embedding distance (:func:`triplet_on_tiles`). Both return
boxes as fractions of the tile side, best first. :func:`nms` merges boxes across tiles and
scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.ops import nms as torch_nms
from torchvision.ops import roi_align

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.localize.samples import check_factors, reduce_size
from sfmkit.models.ftfy import (
    SOURCE_SIZE,
    STRIDE,
    TARGET_SIZE,
    FTFYNet,
    TripletNet,
    box_iou,
    decode,
    to_input,
)


def crop_windows(sources: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Windows of ``sources`` (n, 3, H, W) at ``boxes`` (k, 4, source pixels), each from source
    ``index[k]``, resampled to 128x128 (bilinear)."""
    rois = torch.cat([index[:, None].to(boxes), boxes], dim=1)
    return roi_align(
        sources, rois, (TARGET_SIZE, TARGET_SIZE), spatial_scale=1.0, sampling_ratio=2, aligned=True
    )


@torch.no_grad()
def ftfy_on_tiles(
    net: FTFYNet, target: np.ndarray, tiles: np.ndarray, top_k: int, batch: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """FTFY's ``top_k`` boxes in each tile.

    Args:
        target: (128, 128, 3) uint8.
        tiles: (t, 256, 256, 3) uint8.

    Returns:
        boxes (t, k, 4) as fractions of the tile side, confidences (t, k).
    """
    device = next(net.parameters()).device
    filters = net.filters(to_input(target[None], device))
    boxes, scores = [], []
    for start in range(0, len(tiles), batch):
        chunk = to_input(tiles[start : start + batch], device)
        pred = net.predict(filters.expand(len(chunk), -1, -1), net.extractor(chunk))
        for p in pred:
            b, s = decode(p, top_k)
            boxes.append(b)
            scores.append(s)
    return np.stack(boxes), np.stack(scores)


@torch.no_grad()
def triplet_on_tiles(
    net: TripletNet, target: np.ndarray, tiles: np.ndarray, side: float, top_k: int, batch: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """The triplet sliding window: the ``top_k`` windows of side ``side`` (fraction of the
    tile side) closest to the target in embedding.

    Each tile is resized so that a window is 128 px, the extractor runs once on it, and the
    fully connected layer becomes an 8x8 convolution over its map. That is the dense sliding
    window at a stride of 16 px, 1/8 of the window (windows see their surroundings through the
    convolutions' padding, where training crops saw zeros).

    Returns:
        boxes (t, k, 4) as fractions of the tile side, scores (t, k) = 1 - distance / 2.
    """
    device = next(net.parameters()).device
    query = net(to_input(target[None], device))[0]
    size = max(int(round(TARGET_SIZE / side / STRIDE)) * STRIDE, TARGET_SIZE)
    cells = TARGET_SIZE // STRIDE
    kernel = net.fc.weight.view(-1, net.fc.in_features // cells**2, cells, cells)
    boxes, scores = [], []
    for start in range(0, len(tiles), batch):
        x = to_input(tiles[start : start + batch], device)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        emb = F.normalize(F.conv2d(net.extractor(x), kernel, net.fc.bias), dim=1)
        dist = (emb - query[None, :, None, None]).norm(dim=1).flatten(1)  # (t, n*n)
        n = emb.shape[-1]
        k = min(top_k, dist.shape[1])
        best = dist.argsort(dim=1)[:, :k].cpu().numpy()
        rows, cols = np.divmod(best, n)
        x0, y0 = cols * STRIDE / size, rows * STRIDE / size
        w = TARGET_SIZE / size
        boxes += list(np.stack([x0, y0, x0 + w, y0 + w], axis=-1))
        scores += list(1.0 - np.take_along_axis(dist.cpu().numpy(), best, 1) / 2.0)
    return np.stack(boxes), np.stack(scores)


def merge_tiles(
    found: np.ndarray,
    scores: np.ndarray,
    windows: np.ndarray,
    image_size: tuple[int, int],
    nms_iou: float,
    top_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile boxes (t, k, 4; fractions of each tile) -> source pixels through the tiles'
    ``windows`` (t, 4), clipped to ``image_size`` (W, H), then non-maximum suppression:
    (boxes, scores), best first."""
    origin, extent = windows[:, None, :2], windows[:, None, 2:] - windows[:, None, :2]
    full = np.concatenate([origin + found[..., :2] * extent, origin + found[..., 2:] * extent], axis=-1)
    full = np.clip(full.reshape(-1, 4), 0, np.array([*image_size, *image_size], np.float64))
    flat = scores.reshape(-1)
    keep = nms(full, flat, nms_iou, top_k)
    return full[keep], flat[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5, top_k: int | None = None) -> np.ndarray:
    """Rows of ``boxes`` (n, 4) kept by non-maximum suppression, best first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    keep = torch_nms(torch.from_numpy(boxes).double(), torch.from_numpy(scores).double(), iou).numpy()
    return keep[:top_k] if top_k is not None else keep


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (..., 4) with boxes (..., 4), broadcast (:func:`sfmkit.models.ftfy.box_iou`
    on NumPy arrays, in float64)."""
    as_tensor = lambda x: torch.from_numpy(np.asarray(x, np.float64))  # noqa: E731
    return box_iou(as_tensor(a), as_tensor(b)).numpy()


# ---------------------------------------------------------------------------------- whole images


@dataclass(frozen=True)
class LocalizeConf:
    """Options of ``sfmkit localize``.

    Attributes:
        factors: down-sampling factors of the source to search (the close-up is taken as
            ``f`` times finer than the source reduced ``f`` times).
        top_k: boxes returned.
        tile_ratio: tile side over the close-up's footprint in the reduced source (the paper
            searches tiles about 4.5 times the query side).
        overlap: tiles step by ``(1 - overlap)`` of their side.
        nms_iou: boxes overlapping a better one by more than this are dropped.
        per_tile: boxes kept per tile before suppression.
    """

    factors: tuple[int, ...] = (1, 2, 4, 6, 8, 10)
    top_k: int = 5
    tile_ratio: float = 4.5
    overlap: float = 0.5
    nms_iou: float = 0.5
    per_tile: int = 10

    def __post_init__(self) -> None:
        check_factors(self.factors)
        if self.top_k < 1 or self.per_tile < 1:
            raise ConfigError("top_k and per_tile must be >= 1")
        if self.tile_ratio < 1.5 or not 0 <= self.overlap < 1 or not 0 < self.nms_iou <= 1:
            raise ConfigError("need tile_ratio >= 1.5, 0 <= overlap < 1 and 0 < nms_iou <= 1")


@dataclass
class Found:
    """Boxes found in a source image, best first, in its full-resolution pixels."""

    boxes: np.ndarray  # (k, 4) x0, y0, x1, y1
    confidence: np.ndarray  # (k,)
    factor: np.ndarray  # (k,) the factor each box was found at
    tiles: int

    def as_json(self) -> dict[str, Any]:
        return {
            "boxes": [
                {
                    "x0": float(b[0]),
                    "y0": float(b[1]),
                    "x1": float(b[2]),
                    "y1": float(b[3]),
                    "confidence": float(c),
                    "factor": int(f),
                }
                for b, c, f in zip(self.boxes, self.confidence, self.factor, strict=True)
            ]
        }


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Tile origins covering ``[0, length)`` with tiles of ``tile`` at ``step`` (the last one
    flush with the end)."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile + 1, max(step, 1)))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def source_tiles(
    source: Image.Image, footprint: float, factor: int, conf: LocalizeConf
) -> tuple[np.ndarray, np.ndarray] | None:
    """The 256x256 tiles of ``source`` reduced ``factor`` times for a close-up whose footprint
    there is ``footprint`` pixels, and each tile's window in full-resolution pixels; None when
    the footprint is too small (under 4 px) or too large for the reduced image."""
    width, height = source.size
    reduced_size = reduce_size(source.size, factor)
    if footprint < 4 or footprint * 1.5 > min(reduced_size):
        return None
    reduced = source if factor == 1 else source.resize(reduced_size, Image.Resampling.LANCZOS)
    tile = min(int(round(conf.tile_ratio * footprint)), *reduced_size)
    step = int(round(tile * (1 - conf.overlap)))
    windows = np.array(
        [
            [x, y, x + tile, y + tile]
            for y in tile_starts(reduced_size[1], tile, step)
            for x in tile_starts(reduced_size[0], tile, step)
        ],
        np.float64,
    )
    tiles = np.stack(
        [
            np.asarray(reduced.resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.BILINEAR, box=tuple(w)))
            for w in windows
        ]
    )
    scale = np.array([width / reduced_size[0], height / reduced_size[1]] * 2)
    return tiles, windows * scale


def check_query(query_size: tuple[int, int], source_size: tuple[int, int], where: str) -> None:
    """A close-up must be smaller than the image it is searched in."""
    if query_size[0] > source_size[0] or query_size[1] > source_size[1]:
        raise SfmkitError(
            f"{where}: the close-up ({query_size[0]}x{query_size[1]}) is larger than the source "
            f"({source_size[0]}x{source_size[1]}); pass the close-up first and the wide image second"
        )


def localize(
    net: FTFYNet, query: np.ndarray, source: np.ndarray, conf: LocalizeConf = LocalizeConf()
) -> Found:
    """Search the close-up ``query`` (h, w, 3) in ``source`` (H, W, 3) at every factor of
    ``conf``: tiles at each factor, FTFY on each tile, boxes mapped to full-resolution pixels,
    then non-maximum suppression across tiles and factors."""
    check_query((query.shape[1], query.shape[0]), (source.shape[1], source.shape[0]), "localize")
    target = np.asarray(
        Image.fromarray(query).resize((TARGET_SIZE, TARGET_SIZE), Image.Resampling.LANCZOS), np.uint8
    )
    side = float(np.sqrt(query.shape[0] * query.shape[1]))
    image = Image.fromarray(source)
    boxes, scores, factors, n_tiles = [], [], [], 0
    for factor in conf.factors:
        made = source_tiles(image, side / factor, int(factor), conf)
        if made is None:
            continue
        tiles, windows = made
        n_tiles += len(tiles)
        found, conf_ = ftfy_on_tiles(net, target, tiles, conf.per_tile)
        size = (source.shape[1], source.shape[0])
        merged, merged_scores = merge_tiles(found, conf_, windows, size, conf.nms_iou)
        boxes.append(merged)
        scores.append(merged_scores)
        factors.append(np.full(len(merged), factor))
    if not boxes:
        raise SfmkitError(
            f"no factor of {list(conf.factors)} fits a {query.shape[1]}x{query.shape[0]} close-up in a "
            f"{source.shape[1]}x{source.shape[0]} source: at factor f its footprint is its side / f "
            "and must be 4 px or more and under two thirds of the reduced source; choose other --factors"
        )
    all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
    all_factors = np.concatenate(factors)
    keep = nms(all_boxes, all_scores, conf.nms_iou, conf.top_k)
    return Found(all_boxes[keep], all_scores[keep], all_factors[keep], n_tiles)
