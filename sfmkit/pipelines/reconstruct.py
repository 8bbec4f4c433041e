"""``reconstruct``: extract -> pairs -> match -> verify -> map, with timings and a report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmkit.features import FeatureConf, extractor_kind, get_conf
from sfmkit.features.extract import extract
from sfmkit.geometry import verify as verify_mod
from sfmkit.geometry.verify import VerifyConf, verify
from sfmkit.io.h5 import json_attr, list_items
from sfmkit.io.pairs import make_pairs
from sfmkit.matching import match as match_mod
from sfmkit.matching.match import MatchConf, match
from sfmkit.reconstruction.mapping import MapConf, MapResult, map_images
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.report import write_report
from sfmkit.utils.timing import StageTimer

logger = logging.getLogger(__name__)

#: Verification used when none is named, by feature extractor kind.
DEFAULT_VERIFY_FOR_FEATURES = {"dense_vgg": "multi-homography", "sift": "none"}


@dataclass(frozen=True)
class ReconstructConf:
    """The whole job. Matcher and verification default to the feature type's usual ones."""

    features: FeatureConf = field(default_factory=lambda: get_conf("dense-vgg16"))
    matcher: MatchConf | None = None
    verify: VerifyConf | None = None
    mapping: MapConf = field(default_factory=MapConf)
    pairs: str = "exhaustive"

    def resolved(self) -> ReconstructConf:
        kind = extractor_kind(self.features)
        return ReconstructConf(
            features=self.features,
            matcher=self.matcher or match_mod.CONFS[match_mod.DEFAULT_FOR_FEATURES[kind]],
            verify=self.verify or verify_mod.CONFS[DEFAULT_VERIFY_FOR_FEATURES[kind]],
            mapping=self.mapping,
            pairs=self.pairs,
        )


@dataclass(frozen=True)
class ReconstructResult:
    """Attributes:
    mapping: the map stage's result (model path, model, stats).
    timings: seconds per stage.
    counts: per-stage counts (images extracted/skipped, pairs, matches).
    report: path of ``report.json``.
    """

    mapping: MapResult
    timings: dict[str, float]
    counts: dict[str, Any]
    report: Path


def reconstruct(
    conf: ReconstructConf,
    images: Path,
    out_dir: Path,
    *,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> ReconstructResult:
    """Run every stage; each one resumes from what ``out_dir`` already holds."""
    conf = conf.resolved()
    assert conf.matcher is not None and conf.verify is not None  # set by resolved()
    out_dir = Path(out_dir)
    timer = StageTimer()
    counts: dict[str, Any] = {}
    with timer.stage("extract"):
        feats = extract(conf.features, images, out_dir, image_names=image_names, overwrite=overwrite, device=device)
    counts["extract"] = json_attr(feats, "last_run")
    counts["skipped_images"] = json_attr(feats, "skipped", {})
    with timer.stage("pairs"):
        names = [k[0] for k in list_items(feats, 1)]
        pairs = make_pairs(conf.pairs, sorted(names), out_dir)
    with timer.stage("match"):
        matches = match(conf.matcher, feats, pairs, out_dir, overwrite=overwrite, device=device)
    counts["match"] = json_attr(matches, "last_run")
    with timer.stage("verify"):
        verified = verify(conf.verify, matches, pairs, out_dir, features=feats, overwrite=overwrite)
    counts["verify"] = json_attr(verified, "last_run")
    with timer.stage("map"):
        result = map_images(conf.mapping, images, verified, pairs, out_dir / "sfm", features=feats)
    report = write_report(
        out_dir,
        "reconstruct",
        config=conf_to_dict(conf),
        inputs={"images": str(Path(images).resolve()), "pairs": str(pairs)},
        outputs={"features": feats, "matches": matches, "verified": verified, "model": result.path},
        counts=counts,
        reconstruction=result.stats,
        timings=timer.as_dict(),
    )
    return ReconstructResult(result, timer.as_dict(), counts, report)
