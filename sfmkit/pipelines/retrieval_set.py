"""``build-retrieval-set``: many rendered and labelled scenes for ``sfmkit train retrieval``.

Each scene is ``sfmkit synth`` (exact cameras and mesh) followed by ``sfmkit
build-gl3d-labels`` on its mesh, in ``OUT/<kind>-<seed>/``. Seeds run from ``first_seed``
upwards, one per scene of every kind, so a set is reproducible from its options alone. The
project's test and validation scenes use seeds below :data:`MIN_TRAINING_SEED` (the retrieval
benchmark: 21 and 22), so training scenes made here never share geometry or textures with
them. A finished scene (its labels file written) is skipped on a rerun, so an interrupted build
resumes where it stopped; ``OUT/retrieval-set.json`` lists the scenes and their options.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from sfmkit.errors import SfmkitError
from sfmkit.pipelines.build_gl3d_labels import LabelsConf, build_gl3d_labels
from sfmkit.pipelines.synth import SynthConf, synthesize
from sfmkit.synth.scenes import SCENES
from sfmkit.utils.config import conf_to_dict
from sfmkit.utils.files import write_text_atomic
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

#: Training seeds start here; test and validation scenes use lower ones.
MIN_TRAINING_SEED = 1000
#: Scene kinds used by default (the survey layout is for the scaling benchmark).
DEFAULT_KINDS = ("orbit", "facade", "aerial")


@dataclass(frozen=True)
class RetrievalSetConf:
    """Attributes:
    kinds: scene kinds, each rendered ``per_kind`` times.
    per_kind: scenes of each kind.
    first_seed: seed of the first scene of each kind (the next ones count up).
    n_images, size: cameras per scene and image size (W, H).
    textures: a folder of photos to texture the scenes with (None: procedural textures).
    labels: the label options (mesh overlap, strong / weak intervals, mask size).
    """

    kinds: tuple[str, ...] = DEFAULT_KINDS
    per_kind: int = 50
    first_seed: int = MIN_TRAINING_SEED
    n_images: int = 24
    size: tuple[int, int] = (480, 360)
    textures: str | None = None
    labels: LabelsConf = field(default_factory=lambda: LabelsConf(plot_pairs=0))

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in SCENES]
        if unknown:
            raise SfmkitError(f"unknown scene kind {unknown[0]!r}; choose among {', '.join(SCENES)}")
        if self.first_seed < MIN_TRAINING_SEED:
            raise SfmkitError(
                f"training seeds start at {MIN_TRAINING_SEED} (lower seeds are kept for test and validation "
                f"scenes); got --first-seed {self.first_seed}"
            )
        if self.per_kind < 1 or self.n_images < 3:
            raise SfmkitError("need at least one scene per kind and three images per scene")

    def scenes(self) -> list[tuple[str, int]]:
        """(kind, seed) of every scene, kinds interleaved so a partial set is balanced."""
        return [(k, self.first_seed + i) for i in range(self.per_kind) for k in self.kinds]


@dataclass(frozen=True)
class RetrievalSetResult:
    labels: list[Path]
    made: int
    reused: int
    timings: dict[str, float]


def build_retrieval_set(conf: RetrievalSetConf, out: Path) -> RetrievalSetResult:
    """Render and label every scene of ``conf`` under ``out`` (finished scenes are kept)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SfmkitError(f"cannot create the output folder {out}: {exc.strerror}") from exc
    write_text_atomic(
        out / "retrieval-set.json",
        json.dumps({"conf": conf_to_dict(conf), "scenes": [f"{k}-{s}" for k, s in conf.scenes()]}, indent=1),
    )
    timings = {"synth": 0.0, "labels": 0.0}
    labels_paths, made, reused = [], 0, 0
    for kind, seed in track(conf.scenes(), "retrieval set"):
        folder = out / f"{kind}-{seed}"
        labels_path = folder / "labels.h5"
        labels_paths.append(labels_path)
        if labels_path.is_file():
            reused += 1
            continue
        start = time.perf_counter()
        synth_conf = SynthConf(
            scene=kind, n_images=conf.n_images, size=conf.size, seed=seed, textures=conf.textures
        )
        synthesize(synth_conf, folder)
        timings["synth"] += time.perf_counter() - start
        start = time.perf_counter()
        labels_conf = replace(conf.labels, mesh=str(folder / "mesh.ply"))
        build_gl3d_labels(folder / "model", labels_path, labels_conf, folder / "images")
        timings["labels"] += time.perf_counter() - start
        made += 1
        logger.info("%s: rendered and labelled", folder)
    return RetrievalSetResult(labels_paths, made, reused, {k: round(v, 1) for k, v in timings.items()})
