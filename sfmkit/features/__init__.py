"""Feature extractors and their named presets.

``CONFS`` maps a preset name (a CLI choice of ``--features``) to its frozen config;
:func:`make_extractor` builds the extractor for a config.
"""

from __future__ import annotations

import torch

from sfmkit.errors import ConfigError
from sfmkit.features.base import Extractor
from sfmkit.features.dense_vgg import DenseVGGConf, DenseVGGExtractor
from sfmkit.features.multiscale_kp import MultiscaleKPConf, MultiscaleKPExtractor
from sfmkit.features.sift import SiftConf, SiftExtractor

FeatureConf = DenseVGGConf | SiftConf | MultiscaleKPConf

CONFS: dict[str, FeatureConf] = {
    "dense-vgg16": DenseVGGConf(),
    "dense-vgg16-1600": DenseVGGConf(name="dense-vgg16-1600", max_size=1600),
    "sift": SiftConf(),
    "multiscale-kp": MultiscaleKPConf(),
}


def get_conf(name: str) -> FeatureConf:
    """The preset called ``name``."""
    try:
        return CONFS[name]
    except KeyError:
        raise ConfigError(f"unknown feature preset {name!r}; choose among {sorted(CONFS)}") from None


def make_extractor(conf: FeatureConf, device: torch.device) -> Extractor:
    if isinstance(conf, DenseVGGConf):
        return DenseVGGExtractor(conf, device)
    if isinstance(conf, SiftConf):
        return SiftExtractor(conf)
    if isinstance(conf, MultiscaleKPConf):
        return MultiscaleKPExtractor(conf, device)
    raise ConfigError(f"no extractor for {type(conf).__name__}")


def extractor_kind(conf: FeatureConf) -> str:
    """The kind stored in feature files; it picks the default matcher and verification."""
    if isinstance(conf, DenseVGGConf):
        return "dense_vgg"
    if isinstance(conf, MultiscaleKPConf):
        return "multiscale_kp"
    return "sift"
