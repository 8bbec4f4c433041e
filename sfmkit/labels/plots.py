"""A figure of GL3D overlap masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfmkit.utils.plots import save_figure


def plot_overlap_masks(
    path: Path,
    pairs: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]],
) -> Path:
    """One row per image pair: both images, each with its overlap mask (the part that sees
    what the other image sees) in colour and the rest dark grey.

    ``pairs``: (name_i, name_j, image_i, image_j, mask_ij, mask_ji, caption) with (H, W, 3)
    uint8 images and low-resolution bool masks (upsampled here, nearest neighbour).
    """
    from matplotlib.figure import Figure  # imported on use: matplotlib is slow to load

    fig = Figure(figsize=(9.0, 3.4 * max(len(pairs), 1)))
    for row, (name_i, name_j, image_i, image_j, mask_ij, mask_ji, caption) in enumerate(pairs):
        for col, (name, image, mask) in enumerate(((name_i, image_i, mask_ij), (name_j, image_j, mask_ji))):
            ax = fig.add_subplot(len(pairs), 2, 2 * row + col + 1)
            h, w = image.shape[:2]
            rows = np.minimum((np.arange(h) * mask.shape[0]) // h, mask.shape[0] - 1)
            cols = np.minimum((np.arange(w) * mask.shape[1]) // w, mask.shape[1] - 1)
            big = mask[rows][:, cols]
            grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.3
            shown = np.where(big[..., None], image.astype(np.float32), grey)
            ax.imshow(np.clip(shown, 0, 255).astype(np.uint8))
            ax.set_title(f"{name}" + (f"  ({caption})" if col == 0 else ""), fontsize=8)
            ax.set_axis_off()
    return save_figure(fig, path)
