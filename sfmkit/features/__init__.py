"""Feature extractors, their named presets and the registry of feature kinds.

``CONFS`` maps a preset name (a CLI choice of ``--features``) to its frozen config. Each
config class declares its ``kind`` (stored in feature files), the matcher, verification and
keypoint refinement used when none is named (``default_matcher``, ``default_verification``,
``default_refinement``: a preset of :mod:`sfmkit.refinement.refine`, possibly followed by ``+ba``
for the featuremetric bundle adjustment after mapping, or ``none``), whether its items
carry the dense coarse/fine grids of coarse-to-fine matching (``dense``), and how
``--weights`` changes it (``with_weights``). :data:`KINDS` maps each kind to its config class,
:func:`make_extractor` builds the extractor of a config, and :func:`with_max_size` /
:func:`extraction_size` apply ``--max-size`` and the collection-dependent size: no other module
tells the kinds apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from sfmkit.errors import ConfigError
from sfmkit.features.base import Extractor
from sfmkit.features.dense_vgg import DenseVGGConf, DenseVGGExtractor
from sfmkit.features.multiscale_kp import MultiscaleKPConf, MultiscaleKPExtractor
from sfmkit.features.peers import PeerConf, PeerExtractor
from sfmkit.features.sift import SiftConf, SiftExtractor

FeatureConf = DenseVGGConf | SiftConf | MultiscaleKPConf | PeerConf

#: kind -> (config class, extractor class taking (config, device))
_REGISTRY: dict[str, tuple[type, Callable[[Any, torch.device], Extractor]]] = {
    DenseVGGConf.kind: (DenseVGGConf, DenseVGGExtractor),
    SiftConf.kind: (SiftConf, SiftExtractor),
    MultiscaleKPConf.kind: (MultiscaleKPConf, MultiscaleKPExtractor),
    PeerConf.kind: (PeerConf, PeerExtractor),
}
#: kind (as stored in feature files) -> config class
KINDS: dict[str, type] = {kind: conf for kind, (conf, _) in _REGISTRY.items()}

CONFS: dict[str, FeatureConf] = {
    "dense-vgg16": DenseVGGConf(),
    # explicit sizes: 1600 px for every collection; the pyramid's levels are fractions of 1024 px
    "dense-vgg16-1600": DenseVGGConf(name="dense-vgg16-1600", max_size=1600, large_images=None),
    "dense-vgg16-ms": DenseVGGConf(name="dense-vgg16-ms", pyramid=(1.0, 0.5, 0.25), large_images=None),
    "dense-vgg16-bf16": DenseVGGConf(name="dense-vgg16-bf16", precision="bfloat16"),
    "dense-vgg16-mixed": DenseVGGConf(name="dense-vgg16-mixed", precision="mixed-bf16"),
    "sift": SiftConf(),
    "multiscale-kp": MultiscaleKPConf(),
    # the modern peers (optional extra `peers`): ALIKED / DISK / XFeat, matched by LightGlue
    "aliked": PeerConf(),
    "disk": PeerConf(name="disk", model="disk"),
    "xfeat": PeerConf(name="xfeat", model="xfeat", detection_threshold=0.05),
}


def get_conf(name: str) -> FeatureConf:
    """The preset called ``name``."""
    try:
        return CONFS[name]
    except KeyError:
        raise ConfigError(f"unknown feature preset {name!r}; choose among {sorted(CONFS)}") from None


def feature_kind(kind: str | None) -> type:
    """The config class of a kind stored in a feature file (its ``extractor`` attribute; None,
    a file without one, means dense VGG16, the only kind before the attribute existed)."""
    if kind is None:
        return DenseVGGConf
    try:
        return KINDS[kind]
    except KeyError:
        raise ConfigError(f"unknown feature kind {kind!r}; sfmkit knows {sorted(KINDS)}") from None


def make_extractor(conf: FeatureConf, device: torch.device) -> Extractor:
    """The extractor of ``conf``."""
    return _REGISTRY[conf.kind][1](conf, device)


def with_max_size(conf: FeatureConf, max_size: int | None) -> FeatureConf:
    """``conf`` extracting every collection at ``max_size`` (``--max-size``; None: unchanged). For
    dense VGG16 this also turns off the smaller size for large captures (``large_images``)."""
    if max_size is None:
        return conf
    if isinstance(conf, DenseVGGConf):
        return conf.with_max_size(max_size)
    return dataclasses.replace(conf, max_size=max_size)


def extraction_size(conf: FeatureConf, median_side: int | None) -> int:
    """The longer image side ``conf`` extracts a collection at, given the median longer side of
    its images (None: unknown)."""
    return conf.extraction_size(median_side) if isinstance(conf, DenseVGGConf) else conf.max_size
