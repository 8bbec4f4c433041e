"""Global image descriptors: conv5_3 maps aggregated by MAC and regional MAC.

Global files (``global-<tag>.h5``) hold one group per image:

``global_descriptor`` (D,) float32: MAC, L2-normalised, NOT whitened;
``regional``          (R, D) float16: max-pooled regions of :func:`rmac_regions`, each
                      L2-normalised, NOT whitened (R-MAC and PR-MAC are built from them);
``image_size``        (2,) int32, [W, H] of the full-resolution image.

Whitening and aggregation happen at search time (:mod:`sfmkit.retrieval.search`), so one
extraction serves MAC, R-MAC and PR-MAC, and the whitening can be the model's or one
learned on the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sfmkit.io.images import LoadedImage
from sfmkit.models.retrieval import load_retrieval_model
from sfmkit.retrieval.aggregation import mac, regional_mac, rmac_regions


@dataclass(frozen=True)
class GlobalConf:
    """Global-descriptor extraction.

    Attributes:
        name: preset name (part of the output file name).
        weights: the retrieval model: ``default``, a backbone name or a ``.pt`` model file.
        max_size: longer image side fed to the network (the paper: 896).
        levels: R-MAC region scales (3: 1 + 9 + 25 regions on a square map).
    """

    name: str = "vgg16-conv5"
    weights: str = "default"
    max_size: int = 896
    levels: int = 3


#: Global-descriptor presets (``sfmkit retrieve``).
GLOBAL_CONFS: dict[str, GlobalConf] = {"vgg16-conv5": GlobalConf()}


class GlobalExtractor:
    """Callable: decoded image -> the datasets of one global-file item."""

    def __init__(self, conf: GlobalConf, device: torch.device) -> None:
        self.conf = conf
        self.device = device
        self.model = load_retrieval_model(conf.weights)
        self.net = self.model.trunk.to(device)

    @torch.inference_mode()
    def __call__(self, image: LoadedImage) -> dict[str, np.ndarray]:
        x = torch.from_numpy(image.rgb).to(self.device).permute(2, 0, 1)[None].float()
        fmap = self.net(x, ("conv5_3",))["conv5_3"]
        return global_items(fmap, image.size, self.conf.levels)


def global_items(fmap: torch.Tensor, image_size: tuple[int, int], levels: int = 3) -> dict[str, np.ndarray]:
    """The datasets of one global-file item from a (1, D, h, w) conv5_3 map of an image of
    ``image_size`` (W, H) pixels."""
    regions = rmac_regions(fmap.shape[2], fmap.shape[3], levels)
    return {
        "global_descriptor": mac(fmap)[0].float().cpu().numpy(),
        "regional": regional_mac(fmap, regions)[0].to(torch.float16).cpu().numpy(),
        "image_size": np.asarray(image_size, np.int32),
    }
