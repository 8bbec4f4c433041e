"""Feature extractors and their named presets.

``CONFS`` maps a preset name (a CLI choice of ``--features``) to its frozen config;
:func:`make_extractor` builds the extractor for a config.
"""

from __future__ import annotations

from typing import Union

import torch

from sfmkit.errors import ConfigError
from sfmkit.features.base import Extractor
from sfmkit.features.dense_vgg import DenseVGGConf, DenseVGGExtractor
from sfmkit.features.sift import SiftConf, SiftExtractor

FeatureConf = Union[DenseVGGConf, SiftConf]

CONFS: dict[str, FeatureConf] = {
    "dense-vgg16": DenseVGGConf(),
    "dense-vgg16-1600": DenseVGGConf(name="dense-vgg16-1600", max_size=1600),
    "sift": SiftConf(),
}


def get_conf(name: str) -> FeatureConf:
    """The preset called ``name``."""
    try:
        return CONFS[name]
    except KeyError:
        raise ConfigError(f"unknown feature preset {name!r}; choose among {sorted(CONFS)}") from None


def is_dense(conf: FeatureConf) -> bool:
    return isinstance(conf, DenseVGGConf)


def make_extractor(conf: FeatureConf, device: torch.device) -> Extractor:
    if isinstance(conf, DenseVGGConf):
        return DenseVGGExtractor(conf, device)
    if isinstance(conf, SiftConf):
        return SiftExtractor(conf)
    raise ConfigError(f"no extractor for {type(conf).__name__}")


def conf_from_attrs(attrs: dict) -> FeatureConf:
    """Rebuild the config stored in a feature file's attributes."""
    from sfmkit.utils.config import conf_from_dict

    values = dict(attrs["config"])
    kind = attrs.get("extractor", "dense_vgg")
    cls = {"dense_vgg": DenseVGGConf, "sift": SiftConf}.get(kind)
    if cls is None:
        raise ConfigError(f"unknown extractor kind {kind!r} in feature file")
    return conf_from_dict(cls, values)


def extractor_kind(conf: FeatureConf) -> str:
    return "dense_vgg" if isinstance(conf, DenseVGGConf) else "sift"
