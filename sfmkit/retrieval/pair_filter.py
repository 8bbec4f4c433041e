"""GetNet as a pair filter: score image pairs with a trained pair verifier and drop the ones
it calls different before matching (``sfmkit filter-pairs``, ``reconstruct --pair-filter``),
and the two-image check behind ``sfmkit pair-verify``.

The score of a pair is ``1 / (1 + exp((d - t) / tau))``, a number in (0, 1) that is above 0.5
exactly when the distance ``d`` of the two embeddings is below the model's threshold ``t``
(``tau`` = :data:`SCORE_TEMPERATURE`). A filter threshold other than the model's is given on
the same 0-1 score scale (``getnet:0.3`` keeps pairs scoring at least 0.3).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.images import LUMA
from sfmkit.io.pairs import read_pairs, write_pairs
from sfmkit.io.pairsets import load_square
from sfmkit.models.getnet import GetNet, load_getnet, predict_pairs
from sfmkit.models.weights import sha256_file
from sfmkit.utils.device import resolve_device
from sfmkit.utils.files import write_text_atomic
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

#: The GetNet model shipped with sfmkit (``sfmkit train pair-verify``; see its card).
SHIPPED_GETNET = Path(__file__).resolve().parents[1] / "models" / "data" / "getnet-scenes.pt"
SCORE_TEMPERATURE = 0.05
FILTERS = ("getnet",)
#: Pairs scored per forward pass.
BATCH = 64


@dataclass(frozen=True)
class PairFilterConf:
    """A pair filter: ``getnet`` or ``getnet:THRESHOLD`` (a score in (0, 1); default 0.5, the
    model's own threshold), with an optional model file (default: the shipped one)."""

    kind: str = "getnet"
    threshold: float = 0.5
    model: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FILTERS:
            raise ConfigError(f"unknown pair filter {self.kind!r}; choose one of {list(FILTERS)}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"the pair-filter threshold is a score in (0, 1), got {self.threshold}")

    @classmethod
    def parse(cls, spec: str, model: str | None = None) -> PairFilterConf:
        """``getnet`` or ``getnet:0.3``."""
        kind, _, value = spec.partition(":")
        try:
            threshold = float(value) if value else 0.5
        except ValueError:
            raise ConfigError(f"--pair-filter must look like getnet or getnet:0.3, got {spec!r}") from None
        return cls(
            kind=kind, threshold=threshold, model=None if model is None else str(Path(model).resolve())
        )


def verifier_path(model: str | Path | None) -> Path:
    """The model file (default: the shipped one), or a clear error when it does not exist."""
    path = SHIPPED_GETNET if model is None else Path(model)
    if not path.is_file():
        if model is None:
            raise SfmkitError(
                "this sfmkit has no trained GetNet model: train one with 'sfmkit train pair-verify' "
                "and pass it with --model"
            )
        raise SfmkitError(f"GetNet model {path} does not exist ('sfmkit train pair-verify' makes one)")
    return path


def load_verifier(model: str | Path | None, device: str = "auto") -> tuple[GetNet, dict[str, Any], Path]:
    """The model file (default: the shipped one) on ``device``."""
    path = verifier_path(model)
    net, card = load_getnet(path)
    return net.to(resolve_device(device)), card, path


def score(distance: np.ndarray, threshold: float) -> np.ndarray:
    """Distances -> scores in (0, 1), 0.5 at the model's threshold."""
    z = np.clip((np.asarray(distance, np.float64) - threshold) / SCORE_TEMPERATURE, -60, 60)
    return 1.0 / (1.0 + np.exp(z))


@dataclass
class PairCheck:
    """What the verifier says of one pair; regions in pixels of each full-resolution image."""

    score: float
    same: bool
    distance: float
    region_a: list[float]
    region_b: list[float]

    def as_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "same": self.same,
            "distance": self.distance,
            "region_a": self.region_a,
            "region_b": self.region_b,
        }


def _pixels(box: np.ndarray, size: tuple[int, int]) -> list[float]:
    w, h = size
    return [round(float(v), 1) for v in box * np.array([w, h, w, h])]


def check_pairs(
    net: GetNet,
    card: dict[str, Any],
    images: dict[str, tuple[np.ndarray, tuple[int, int]]],
    pairs: list[tuple[str, str]],
    threshold: float = 0.5,
    batch: int = BATCH,
) -> list[PairCheck]:
    """Score ``pairs`` of images already loaded by :func:`load_images` (name -> (array, size))."""
    if not pairs:
        return []
    names = list(images)
    row = {name: k for k, name in enumerate(names)}
    index = np.array([(row[a], row[b]) for a, b in pairs], np.int64).reshape(-1, 2)
    stack = np.stack([images[name][0] for name in names])
    out = predict_pairs(net, stack, index, batch, "pair-verify")
    s = score(out["distance"], card["threshold"])
    return [
        PairCheck(
            float(s[n]),
            bool(s[n] >= threshold),
            float(out["distance"][n]),
            _pixels(out["region_a"][n], images[a][1]),
            _pixels(out["region_b"][n], images[b][1]),
        )
        for n, (a, b) in enumerate(pairs)
    ]


def load_images(
    folder: Path, names: list[str], size: int, channels: int
) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    """Every named image as the verifier sees it (grey when the model takes one channel)."""
    loaded = {}
    for name in track(names, "images"):
        square, full = load_square(Path(folder) / name, size)
        if channels == 1:
            grey = np.tensordot(np.array(LUMA, np.float32), square.astype(np.float32), axes=1)
            square = np.round(grey)[None].astype(np.uint8)
        loaded[name] = (square, full)
    return loaded


@dataclass
class FilterResult:
    kept: Path
    record: Path
    counts: dict[str, int]
    seconds: float


def filter_pairs(
    conf: PairFilterConf,
    images: Path,
    pairs_path: Path,
    out_dir: Path,
    *,
    known: list[str] | None = None,
    device: str = "auto",
) -> FilterResult:
    """Write ``pairs-filtered-<tag>.txt`` (kept pairs) and ``pair-filter-<tag>.json`` (every pair's
    score and the decision) in ``out_dir``. ``known``: the images that may appear (pairs naming
    others are dropped with a warning, as the match stage does). A finished record made by the
    same model (checksum) from the same pairs at the same threshold is reused."""
    start = time.perf_counter()
    model = verifier_path(conf.model)
    out_dir = Path(out_dir)
    tag = conf.kind if conf.threshold == 0.5 else f"{conf.kind}-{conf.threshold:g}"
    kept_path = out_dir / f"pairs-filtered-{tag}.txt"
    record_path = out_dir / f"pair-filter-{tag}.json"
    identity = {
        "model_sha256": sha256_file(model),
        "input_sha256": sha256_file(Path(pairs_path)),
        "threshold": conf.threshold,
    }
    if record_path.is_file() and kept_path.is_file():
        try:
            previous = json.loads(record_path.read_text())
        except (OSError, ValueError):
            previous = {}
        if all(previous.get(k) == v for k, v in identity.items()):
            logger.info("pair filter %s: reusing %s", tag, record_path)
            counts = {
                "pairs": previous["kept"] + previous["dropped"],
                "kept": previous["kept"],
                "dropped": previous["dropped"],
            }
            return FilterResult(kept_path, record_path, counts, time.perf_counter() - start)
    net, card, _ = load_verifier(model, device)
    if net.conf.channels == 1:
        logger.warning("%s takes grey images (a digits model?): photos are scored in grey", model)
    pairs = read_pairs(Path(pairs_path), known=known)
    names = sorted({n for p in pairs for n in p})
    loaded = load_images(Path(images), names, net.conf.size, net.conf.channels)
    checks = check_pairs(net, card, loaded, pairs, conf.threshold)
    kept = [p for p, c in zip(pairs, checks, strict=True) if c.same]
    if pairs and not kept:
        best = max(c.score for c in checks)
        raise SfmkitError(
            f"the pair filter dropped all {len(pairs)} pairs of {pairs_path} (threshold {conf.threshold:g}, "
            f"best score {best:.3f}): lower it (getnet:SCORE) or leave --pair-filter out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pairs(kept_path, kept)
    record = {
        "model": str(model),
        **identity,
        "input": str(pairs_path),
        "kept": len(kept),
        "dropped": len(pairs) - len(kept),
        "pairs": [
            {"a": a, "b": b, "score": round(c.score, 4), "kept": c.same}
            for (a, b), c in zip(pairs, checks, strict=True)
        ],
    }
    write_text_atomic(record_path, json.dumps(record, indent=1))
    counts = {"pairs": len(pairs), "kept": len(kept), "dropped": len(pairs) - len(kept)}
    logger.info("pair filter %s: kept %d of %d pairs", tag, len(kept), len(pairs))
    return FilterResult(kept_path, record_path, counts, time.perf_counter() - start)
