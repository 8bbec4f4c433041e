"""``reconstruct``: extract -> pairs (or retrieve) -> [filter] -> match -> verify -> refine -> map,
with timings and a report. ``pairs="retrieval:K"`` matches each image with its K nearest images by
global descriptor (:mod:`sfmkit.pipelines.retrieve`) instead of every pair; ``pair_filter`` drops
the pairs GetNet calls different before matching (:mod:`sfmkit.retrieval.pair_filter`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmkit.errors import ConfigError, DamagedFileError, SfmkitError
from sfmkit.features import FeatureConf, get_conf
from sfmkit.features.extract import check_weights, extract
from sfmkit.features.global_descriptors import GlobalConf
from sfmkit.geometry import verify as verify_mod
from sfmkit.geometry.verify import VerifyConf, verify
from sfmkit.io.h5 import json_attr, list_items
from sfmkit.io.images import DEFAULT_MAX_PIXELS
from sfmkit.io.pairs import PairsSpec, make_pairs
from sfmkit.matching import match as match_mod
from sfmkit.matching.match import AnyMatchConf, match
from sfmkit.pipelines import checks
from sfmkit.pipelines.retrieve import retrieve
from sfmkit.reconstruction.mapping import MapConf, MapResult, map_images, reconstruction_stats
from sfmkit.refinement import refine as refine_mod
from sfmkit.refinement.bundle import MODELS as BA_MODELS
from sfmkit.refinement.bundle import BundleConf, bundle_adjust
from sfmkit.refinement.refine import RefineConf, refine
from sfmkit.retrieval.pair_filter import PairFilterConf, filter_pairs, load_verifier
from sfmkit.retrieval.search import SearchConf
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.executor import LOCAL, ExecutorConf
from sfmkit.utils.report import write_report
from sfmkit.utils.timing import StageTimer

logger = logging.getLogger(__name__)


#: The report section a running ``reconstruct`` updates after each stage (dropped when it finishes).
PROGRESS_SECTION = "reconstruct-progress"

#: ``--refine`` values: no refinement, featuremetric keypoint adjustment, or that and then a
#: featuremetric bundle adjustment of the mapped model (:mod:`sfmkit.refinement.bundle`).
REFINE_CHOICES = ("none", "keypoints", "keypoints+ba")
#: what ``--refine`` appends to a keypoint refinement for the bundle adjustment after mapping
BA_SUFFIX = "+ba"


@dataclass(frozen=True)
class ReconstructConf:
    """The whole job. ``matcher``, ``verify`` and ``refine`` default (None) to the feature
    type's usual ones; ``best_pairs`` then overrides that verification's setting. ``refine`` is
    ``none``, ``keypoints`` (the default featuremetric adjustment) or a preset of
    :data:`sfmkit.refinement.refine.CONFS`, optionally followed by ``+ba`` (a featuremetric
    bundle adjustment after mapping, ``bundle``)."""

    features: FeatureConf = field(default_factory=lambda: get_conf("dense-vgg16"))
    matcher: AnyMatchConf | None = None
    verify: VerifyConf | None = None
    mapping: MapConf = field(default_factory=MapConf)
    pairs: str = "exhaustive"
    best_pairs: int | None = None
    refine: str | None = None
    pair_filter: PairFilterConf | None = None
    bundle: BundleConf = field(default_factory=BundleConf)

    def __post_init__(self) -> None:
        if self.matcher is not None:  # refused before any extraction
            match_mod.check_matcher(self.matcher, type(self.features))
        if self.refine is not None:
            base = self.refine.removesuffix(BA_SUFFIX)
            if base not in (*REFINE_CHOICES, *refine_mod.CONFS) or (base != self.refine and base == "none"):
                known = [*REFINE_CHOICES, *refine_mod.CONFS]
                raise ConfigError(
                    f"unknown refinement {self.refine!r}; choose among {known} "
                    f"(a keypoint refinement may end in {BA_SUFFIX})"
                )
        camera = self.mapping.camera
        if self.bundle_conf() is not None and camera.intrinsics is None and camera.model not in BA_MODELS:
            raise ConfigError(  # refused before any stage runs, not after mapping
                f"--refine {self.refine} adjusts {', '.join(BA_MODELS)} cameras, not {camera.model}; "
                "choose another --camera-model or leave out +ba"
            )

    def refinement(self) -> str:
        """The ``--refine`` in effect: the user's, else the feature type's default; a default
        bundle adjustment (dense VGG16's) is left out for a camera model it cannot adjust."""
        if self.refine is not None:
            return self.refine
        name = self.features.default_refinement
        camera = self.mapping.camera
        if name.endswith(BA_SUFFIX) and camera.intrinsics is None and camera.model not in BA_MODELS:
            return name.removesuffix(BA_SUFFIX)
        return name

    def bundle_conf(self) -> BundleConf | None:
        """The featuremetric bundle adjustment after mapping, or None."""
        return self.bundle if self.refinement().endswith(BA_SUFFIX) else None

    def stage_confs(self) -> tuple[AnyMatchConf, VerifyConf, RefineConf | None]:
        """The matcher, verification and keypoint refinement (None: none) actually used."""
        matcher = self.matcher or match_mod.CONFS[self.features.default_matcher]
        verification = self.verify or verify_mod.CONFS[self.features.default_verification]
        if self.best_pairs is not None:
            verification = dataclasses.replace(verification, best_pairs=self.best_pairs)
        name = self.refinement().removesuffix(BA_SUFFIX)
        name = "featuremetric" if name == "keypoints" else name
        return matcher, verification, None if name == "none" else refine_mod.CONFS[name]


@dataclass(frozen=True)
class ReconstructResult:
    """Attributes:
    mapping: the map stage's result (model path, model, stats).
    timings: seconds per stage.
    counts: per-stage counts (images extracted/skipped, pairs, matches).
    report: path of ``report.json``.
    peak_memory_mb: peak resident memory per stage and ``max``.
    """

    mapping: MapResult
    timings: dict[str, float]
    counts: dict[str, Any]
    report: Path
    peak_memory_mb: dict[str, float] = field(default_factory=dict)


def run_config(conf: ReconstructConf) -> dict[str, Any]:
    """What ``report.json`` records as the run's configuration (the stage presets resolved)."""
    matcher, verification, refinement = conf.stage_confs()
    config = {
        **{k: v for k, v in conf_to_dict(conf).items() if k != "bundle"},
        "matcher": conf_to_dict(matcher),
        "verify": conf_to_dict(verification),
        "refine": None if refinement is None else conf_to_dict(refinement),
    }
    if conf.bundle_conf() is not None:  # recorded only when used
        config["bundle"] = conf_to_dict(conf.bundle)
    return config


def preflight(
    conf: ReconstructConf,
    images: Path,
    out_dir: Path,
    *,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> tuple[PairsSpec, list[str]]:
    """Every check that needs no stage to have run (see :mod:`sfmkit.pipelines.checks`);
    returns the parsed ``--pairs`` and the images of the run."""
    listing = checks.check_images(images, image_names)
    spec = checks.check_pairs(conf.pairs, listing.names, retrieval=True)
    checks.check_camera(conf.mapping.camera)
    checks.check_device(device)
    check_weights(conf.features)
    if conf.pair_filter is not None:
        load_verifier(conf.pair_filter.model, "cpu")  # the model exists and loads
    checks.check_output(out_dir)
    checks.check_same_options(out_dir, "reconstruct", run_config(conf), overwrite=overwrite)
    return spec, listing.names


def reconstruct(
    conf: ReconstructConf,
    images: Path,
    out_dir: Path,
    *,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    executor: ExecutorConf = LOCAL,
) -> ReconstructResult:
    """Run every stage; each one resumes from what ``out_dir`` already holds. A stage file
    found damaged on reading is recomputed where damaged (the stages run once more).
    ``executor``: where extraction (local and global), matching and verification run (local or
    Ray tasks)."""
    out_dir = Path(out_dir)
    spec, listed = preflight(
        conf, images, out_dir, image_names=image_names, overwrite=overwrite, device=device
    )
    for attempt in range(2):
        try:
            return _run_stages(
                conf,
                images,
                out_dir,
                spec,
                image_names,
                listed,
                overwrite and not attempt,
                device,
                max_pixels,
                executor,
            )
        except DamagedFileError as exc:
            if attempt:
                raise
            logger.warning("%s; running the stages again to recompute what is damaged", exc)
    raise AssertionError("unreachable")


def _run_stages(
    conf: ReconstructConf,
    images: Path,
    out_dir: Path,
    spec: PairsSpec,
    image_names: Sequence[str] | None,
    listed: Sequence[str],
    overwrite: bool,
    device: str,
    max_pixels: int,
    executor: ExecutorConf,
) -> ReconstructResult:
    matcher, verification, refinement = conf.stage_confs()
    counts: dict[str, Any] = {}

    def progress_report(stage: str, error: BaseException | None) -> None:
        """After each stage, the figures so far in the section ``reconstruct-progress`` (the
        finished run's section is replaced only when this run finishes): a run stopped later
        (killed, out of memory, interrupted) keeps the figures of the stages it ran. Each stage
        sets its counts before it ends, so they are in."""
        state = {"status": "running", "last_stage": stage}
        if error is not None:
            state = {"status": "stopped", "stopped_in": stage, "error": f"{type(error).__name__}: {error}"}
        write_report(
            out_dir,
            PROGRESS_SECTION,
            **state,
            config=run_config(conf),
            inputs={"images": str(Path(images).resolve())},
            counts=counts,
            timings=timer.as_dict(),
            peak_memory_mb=timer.peak_memory(),
        )

    timer = StageTimer(after=progress_report)
    with timer.stage("extract"):
        feats = extract(
            conf.features,
            images,
            out_dir,
            image_names=image_names,
            overwrite=overwrite,
            device=device,
            max_pixels=max_pixels,
            executor=executor,
        )
        counts["extract"] = json_attr(feats, "last_run")
        counts["skipped_images"] = json_attr(feats, "skipped", {})
    # the images of this run (a feature file may hold more, from earlier runs)
    wanted = set(listed)
    names = sorted(k[0] for k in list_items(feats, 1) if k[0] in wanted)
    if len(names) < 2:
        raise SfmkitError(
            f"need at least 2 images with features to reconstruct, have {len(names)}; "
            "see the skipped images in the extract summary"
        )
    if spec.kind == "retrieval":
        with timer.stage("retrieve"):
            found = retrieve(
                images,
                out_dir,
                GlobalConf(),
                SearchConf(top_k=spec.n),
                image_names=names,
                overwrite=overwrite,
                device=device,
                executor=executor,
            )
            counts["retrieve"] = {k: v for k, v in found.counts.items() if k != "skipped_images"}
        pairs = found.pairs_file
    else:
        with timer.stage("pairs"):
            pairs = make_pairs(spec, names, out_dir)
    if conf.pair_filter is not None:
        with timer.stage("filter"):
            filtered = filter_pairs(conf.pair_filter, images, pairs, out_dir, known=names, device=device)
            counts["filter"] = filtered.counts
        pairs = filtered.kept
    with timer.stage("match"):
        matches = match(matcher, feats, pairs, out_dir, overwrite=overwrite, device=device, executor=executor)
        counts["match"] = json_attr(matches, "last_run")
    with timer.stage("verify"):
        verified = verify(
            verification, matches, pairs, out_dir, features=feats, overwrite=overwrite, executor=executor
        )
        counts["verify"] = json_attr(verified, "last_run")
    keypoints = feats
    if refinement is not None:
        with timer.stage("refine"):
            keypoints = refine(
                refinement, feats, verified, images, out_dir, pairs=pairs, overwrite=overwrite, device=device
            )
            counts["refine"] = json_attr(keypoints, "last_run")
    with timer.stage("map"):
        result = map_images(
            conf.mapping, images, verified, pairs, out_dir / "sfm", features=keypoints, overwrite=overwrite
        )
        counts["map"] = result.stats  # for the progress section (the report's "reconstruction")
    bundle = conf.bundle_conf()
    if bundle is not None and result.reconstruction is not None:
        with timer.stage("bundle"):
            adjusted = bundle_adjust(bundle, result.path, images, out_dir / "sfm-ba", overwrite=overwrite)
            counts["bundle"] = adjusted.stats
        stats = {**result.stats, **reconstruction_stats(adjusted.reconstruction, result.stats["images"])}
        result = MapResult(adjusted.path, adjusted.reconstruction, stats)
    report = write_report(
        out_dir,
        "reconstruct",
        drop=(PROGRESS_SECTION,),
        config=run_config(conf),
        inputs={"images": str(Path(images).resolve()), "pairs": str(pairs)},
        outputs={
            "features": feats,
            "matches": matches,
            "verified": verified,
            "refined": None if refinement is None else keypoints,
            "model": result.path,
        },
        counts={k: v for k, v in counts.items() if k != "map"},  # map: "reconstruction"
        reconstruction=result.stats,
        timings=timer.as_dict(),
        peak_memory_mb=timer.peak_memory(),
    )
    return ReconstructResult(result, timer.as_dict(), counts, report, timer.peak_memory())
