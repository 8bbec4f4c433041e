"""The commands that make datasets: ``sfmkit synth`` (rendered scenes with exact ground truth),
``make-night`` (Aachen-style day/night subsets), ``build-gl3d-labels`` (overlap labels for
retrieval training) and ``build-patches`` (keypoint patches for the multiscale detector and
descriptor)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sfmkit.cli.common import FactorsOpt, choices, finish, handle_errors, parse_factors, summary_table
from sfmkit.errors import SfmkitError
from sfmkit.labels.overlap import LabelThresholds
from sfmkit.pipelines.build_gl3d_labels import LabelsConf, build_gl3d_labels
from sfmkit.pipelines.make_night import make_night
from sfmkit.pipelines.synth import FORMATS, LIGHTING_CHOICES, SynthConf, synthesize
from sfmkit.synth.scenes import SCENES
from sfmkit.utils.report import write_report

OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
SceneKind = choices("SceneKind", SCENES)
Lighting = choices("Lighting", LIGHTING_CHOICES)
ImageFormat = choices("ImageFormat", FORMATS)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SfmkitError(f"--size must look like 640x480, got {text!r}") from None
    return w, h


@handle_errors
def synth_cmd(
    output: Annotated[Path, typer.Argument(help="Output dataset folder.")],
    scene: Annotated[SceneKind, typer.Option("--scene", help="Scene and camera layout.")] = SceneKind(
        "orbit"
    ),  # type: ignore[valid-type,call-arg]
    n_images: Annotated[int, typer.Option("--n-images", "-n", help="Number of cameras.")] = 10,
    size: Annotated[str, typer.Option("--size", help="Image size WxH.")] = "640x480",
    seed: Annotated[int, typer.Option("--seed", help="Seed of everything random.")] = 0,
    lighting: Annotated[
        Lighting,  # type: ignore[valid-type]
        typer.Option("--lighting", help="day, night (sodium lamps), or both (images/ and images_night/)."),
    ] = Lighting("day"),  # type: ignore[call-arg]
    textures: Annotated[
        Path | None, typer.Option("--textures", help="Texture the scene with crops of these photos.")
    ] = None,
    detail: Annotated[float, typer.Option("--detail", help="Tessellation density factor.")] = 1.0,
    depth: Annotated[bool, typer.Option("--depth", help="Also write depth maps (depth.h5).")] = False,
    points: Annotated[
        int, typer.Option("--points", help="Surface points for the ground-truth tracks.")
    ] = 20000,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="jpg (with EXIF) or png.")
    ] = ImageFormat("jpg"),  # type: ignore[valid-type,call-arg]
) -> None:
    """Render a procedural textured scene with exact cameras (COLMAP model, Strecha files, mesh)."""
    conf = SynthConf(
        scene=scene.value,
        n_images=n_images,
        size=_size(size),
        seed=seed,
        lighting=lighting.value,
        detail=detail,
        textures=None if textures is None else str(textures),
        depth=depth,
        points=points,
        image_format=image_format.value,
    )
    start = time.perf_counter()
    result = synthesize(conf, output)
    rows = [(k, v) for k, v in result.counts.items()]
    finish(
        output,
        "synth",
        conf,
        output,
        time.perf_counter() - start,
        result.counts,
        rows,
        timings_detail=result.timings,
    )


@handle_errors
def make_night_cmd(
    dataset: Annotated[Path, typer.Argument(help="A dataset with ground-truth cameras (Strecha layout).")],
    output: OutOpt,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the night simulation.")] = 0,
    strength: Annotated[
        float, typer.Option("--strength", help="0 = dim evening, 1 = dark street; larger is harder.")
    ] = 1.0,
    max_size: Annotated[int, typer.Option("--max-size", help="Longer side of the written images.")] = 1024,
    night_images: Annotated[
        Path | None,
        typer.Option(
            "--night-images",
            help="Relit night photos of the same cameras, same names (e.g. images_night/ from "
            "'sfmkit synth --lighting both'); replaces the 2D simulation.",
        ),
    ] = None,
) -> None:
    """Aachen-style day/night subsets (a PROXY for Aachen Day-Night, not Aachen): one subset per
    image, in which that image becomes a simulated night photo."""
    start = time.perf_counter()
    folders = make_night(
        dataset, output, seed=seed, strength=strength, max_size=max_size, night_images=night_images
    )
    write_report(
        output,
        "make-night",
        subsets=[f.name for f in folders],
        strength=strength,
        seed=seed,
        night_images=None if night_images is None else str(night_images),
    )
    summary_table(
        "make-night (a proxy for Aachen Day-Night, not Aachen)",
        [("subsets", len(folders)), ("folder", output), ("time", f"{time.perf_counter() - start:.1f} s")],
    )


def _interval(text: str, option: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise SfmkitError(f"{option} must look like 0.5:1.0, got {text!r}") from None
    return lo, hi


@handle_errors
def labels_cmd(
    model: Annotated[Path, typer.Argument(help="COLMAP model folder (cameras, images, points3D).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Labels file to write (.h5; default labels.h5 beside the MODEL folder)."
        ),
    ] = None,
    mesh: Annotated[Path | None, typer.Option("--mesh", help="Surface mesh of the scene (PLY, OBJ).")] = None,
    mesh_from_model: Annotated[
        bool, typer.Option("--mesh-from-model", help="Poisson surface from the model's points.")
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Image folder, for the mask figure (default MODEL/../images)."),
    ] = None,
    gl3d_text: Annotated[
        Path | None,
        typer.Option("--gl3d-text", help="Also write GL3D's common_track.txt / mesh_overlap.txt here."),
    ] = None,
    t_sfm: Annotated[float, typer.Option("--t-sfm", help="CT at or above which CO = 1.")] = 0.2,
    strong: Annotated[str, typer.Option("--strong", help="CO interval of strong positives.")] = "0.5:1.0",
    weak: Annotated[str, typer.Option("--weak", help="CO interval of weak positives.")] = "0.05:0.2",
    grid: Annotated[int, typer.Option("--grid", help="Rays on the longer image side, for masks.")] = 128,
    mask_size: Annotated[int, typer.Option("--mask-size", help="Side of the stored masks.")] = 32,
    poisson_depth: Annotated[
        int, typer.Option("--poisson-depth", help="Octree depth (--mesh-from-model).")
    ] = 9,
    plot_pairs: Annotated[int, typer.Option("--plot-pairs", help="Pairs in the mask PNG (0: none).")] = 3,
) -> None:
    """Overlap labels for training: CT, MO, CO matrices, strong/weak pairs, 32x32 overlap masks."""
    conf = LabelsConf(
        mesh=None if mesh is None else str(mesh),
        mesh_from_model=mesh_from_model,
        poisson_depth=poisson_depth,
        grid=grid,
        mask_size=mask_size,
        thresholds=LabelThresholds(t_sfm, _interval(strong, "--strong"), _interval(weak, "--weak")),
        plot_pairs=plot_pairs,
    )
    if output is None:
        output = Path(model).resolve().parent / "labels.h5"
    start = time.perf_counter()
    result = build_gl3d_labels(model, output, conf, images_dir=images, gl3d_text=gl3d_text)
    rows = [(k.replace("_", " "), v) for k, v in result.counts.items()]
    rows += [("mesh", result.mesh_path), ("mask figure", result.plot or "-")]
    finish(
        output.parent,
        "build-gl3d-labels",
        conf,
        output,
        time.perf_counter() - start,
        result.counts,
        rows,
        timings_detail=result.timings,
    )


@handle_errors
def build_retrieval_set_cmd(
    output: OutOpt,
    per_kind: Annotated[int, typer.Option("--per-kind", help="Scenes of each kind.")] = 50,
    kinds: Annotated[
        str, typer.Option("--kinds", help="Comma-separated scene kinds.")
    ] = "orbit,facade,aerial",
    first_seed: Annotated[
        int, typer.Option("--first-seed", help="Seed of the first scene (1000 or more: lower are for tests).")
    ] = 1000,
    n_images: Annotated[int, typer.Option("--n-images", "-n", help="Cameras per scene.")] = 24,
    size: Annotated[str, typer.Option("--size", help="Image size WxH.")] = "480x360",
    textures: Annotated[
        Path | None, typer.Option("--textures", help="Texture the scenes with crops of these photos.")
    ] = None,
) -> None:
    """Render and label many scenes for 'sfmkit train retrieval' (resumable; training seeds only)."""
    from sfmkit.pipelines.retrieval_set import RetrievalSetConf, build_retrieval_set

    conf = RetrievalSetConf(
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        per_kind=per_kind,
        first_seed=first_seed,
        n_images=n_images,
        size=_size(size),
        textures=None if textures is None else str(textures),
    )
    start = time.perf_counter()
    result = build_retrieval_set(conf, output)
    counts = {"scenes": len(result.labels), "rendered": result.made, "reused": result.reused}
    rows = [(k, v) for k, v in counts.items()] + [("labels", f"{output}/*/labels.h5")]
    finish(
        output,
        "build-retrieval-set",
        conf,
        output,
        time.perf_counter() - start,
        counts,
        rows,
        timings_detail=result.timings,
    )


@handle_errors
def build_patches_cmd(
    model: Annotated[Path, typer.Argument(help="COLMAP model folder (cameras, images, points3D).")],
    images: Annotated[Path, typer.Argument(help="The images the model was made from.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Patches file to write (.h5).")],
    features: Annotated[
        Path | None,
        typer.Option(
            "--features",
            help="Keypoint scales: an sfmkit feature file with scales or a COLMAP database.db "
            "(default: found beside the model).",
        ),
    ] = None,
    scale_factor: Annotated[
        float, typer.Option("--scale-factor", help="Patch side / keypoint scale.")
    ] = 12.0,
    max_points: Annotated[int, typer.Option("--max-points", help="3D points sampled (0: all).")] = 5000,
    max_views: Annotated[int, typer.Option("--max-views", help="Observations per point.")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Patches of SfM points at their scales (positives, jittered copies, negatives)."""
    from sfmkit.train.patches import PatchConf, build_patches

    conf = PatchConf(scale_factor=scale_factor, max_points=max_points, max_views=max_views, seed=seed)
    start = time.perf_counter()
    stats = build_patches(model, images, output, conf, features=features)
    rows: list[tuple[str, Any]] = [
        (k, stats[k]) for k in ("images", "tracks", "positives", "jittered", "negatives")
    ]
    rows.append(("patches per side", ", ".join(f"{k}: {v}" for k, v in stats["per_size"].items())))
    if stats["skipped_images"]:
        rows.append(("skipped images", len(stats["skipped_images"])))
    finish(output.parent, "build-patches", conf, output, time.perf_counter() - start, stats, rows)


@handle_errors
def build_localize_set_cmd(
    images: Annotated[
        Path,
        typer.Argument(
            help="Folder of large images (searched recursively); with --cross-view a rendered scene."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Localisation set to write (.h5).")],
    factors: FactorsOpt = "1 2 4 6 8 10",
    cross_view: Annotated[
        bool,
        typer.Option(
            "--cross-view",
            help="Close-ups cut from other views of a 'synth --depth' scene, boxes by reprojection.",
        ),
    ] = False,
    neighbour_views: Annotated[
        bool,
        typer.Option(
            "--neighbour-views",
            help="Close-ups searched in the next view of a Strecha-layout scene, boxes by a plane fit.",
        ),
    ] = False,
    groups: Annotated[int, typer.Option("--groups", help="Key boxes per image and factor.")] = 4,
    repeats: Annotated[int, typer.Option("--repeats", help="Shifted copies per IoU band.")] = 4,
    box_min: Annotated[int, typer.Option("--box-min", help="Smallest key box side (reduced px).")] = 24,
    box_max: Annotated[
        int, typer.Option("--box-max", help="Largest key box side (reduced px; 0: as large as fits).")
    ] = 80,
    min_fraction: Annotated[
        float,
        typer.Option("--min-fraction", help="Key box side at least this fraction of the largest that fits."),
    ] = 0.0,
    query_side: Annotated[
        int, typer.Option("--query-side", help="Fixed close-up side in full-resolution px (0: drawn).")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Close-ups and the source tiles that hold them, for FTFY and its triplet baseline."""
    from sfmkit.localize.samples import LocalizeSetConf, build_localize_set

    if output.suffix != ".h5":
        raise SfmkitError(f"the localisation set must end in .h5, got {output}")
    if neighbour_views:
        _neighbour_view_set(images, output, parse_factors(factors), groups, query_side or 512, seed)
        return
    if cross_view:
        _cross_view_set(images, output, parse_factors(factors), groups, box_min, box_max, min_fraction, seed)
        return
    conf = LocalizeSetConf(
        factors=parse_factors(factors),
        groups_per_factor=groups,
        repeats=repeats,
        box_min=box_min,
        box_max=box_max,
        min_fraction=min_fraction,
        query_side=query_side,
        seed=seed,
    )
    start = time.perf_counter()
    stats = build_localize_set(images, output, conf)
    rows: list[tuple[str, Any]] = [(k, stats[k]) for k in ("images", "groups", "samples")]
    rows.append(("groups per factor", ", ".join(f"{k}: {v}" for k, v in stats["groups_per_factor"].items())))
    if stats["skipped_images"]:
        rows.append(("skipped images", len(stats["skipped_images"])))
    finish(output.parent, "build-localize-set", conf, output, time.perf_counter() - start, stats, rows)


def _cross_view_set(
    scene: Path,
    output: Path,
    factors: tuple[int, ...],
    queries: int,
    box_min: int,
    box_max: int,
    min_fraction: float,
    seed: int,
) -> None:
    from sfmkit.localize.crossview import CrossViewConf, build_cross_view_set

    conf = CrossViewConf(
        factors=factors,
        queries_per_pair=queries,
        box_min=box_min,
        box_max=box_max,
        min_fraction=min_fraction,
        seed=seed,
    )
    start = time.perf_counter()
    stats = build_cross_view_set(scene, output, conf)
    _view_pair_summary(output, conf, stats, time.perf_counter() - start)


def _neighbour_view_set(
    scene: Path, output: Path, factors: tuple[int, ...], queries: int, query_side: int, seed: int
) -> None:
    from sfmkit.eval.localize_views import NeighbourViewConf, build_neighbour_view_set

    conf = NeighbourViewConf(factors=factors, queries_per_pair=queries, query_side=query_side, seed=seed)
    start = time.perf_counter()
    stats = build_neighbour_view_set(scene, output, conf)
    _view_pair_summary(output, conf, stats, time.perf_counter() - start)


def _view_pair_summary(output: Path, conf: Any, stats: dict[str, Any], seconds: float) -> None:
    """The summary and report of a cross-view or neighbouring-view set."""

    def listed(counts: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in counts.items())

    rows: list[tuple[str, Any]] = [(k, stats[k]) for k in ("images", "pairs", "samples")]
    rows.append(("samples per factor", listed(stats["samples_per_factor"])))
    if "dropped" in stats:
        rows.append(("dropped", listed(stats["dropped"])))
    finish(output.parent, "build-localize-set", conf, output, seconds, stats, rows)


@handle_errors
def build_pair_set_cmd(
    labels: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Labels files from 'sfmkit build-gl3d-labels' (one per scene); none with --digits."
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Pair set to write (.h5).")] = Path(
        "pairs.h5"
    ),
    size: Annotated[
        int, typer.Option("--size", help="Side of the stored (squashed) images (digits: 60 unless given).")
    ] = 128,
    max_positives: Annotated[
        int, typer.Option("--max-positives", help="Positive pairs kept per scene at most (0: all).")
    ] = 0,
    same_scene: Annotated[
        float, typer.Option("--same-scene", help="Share of negatives drawn inside a scene (zero overlap).")
    ] = 0.5,
    digits: Annotated[
        int, typer.Option("--digits", help="Instead of labels: this many pairs of the digits protocol.")
    ] = 0,
    source: Annotated[
        str,
        typer.Option(
            "--source", help="Digits: glyphs (fonts matplotlib bundles) or fashion (Debian's Fashion-MNIST)."
        ),
    ] = "glyphs",
    split: Annotated[
        str, typer.Option("--split", help="Digits: train or test (disjoint fonts / Fashion-MNIST files).")
    ] = "train",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Same / different image pairs with their shared regions, for GetNet (train pair-verify)."""
    from sfmkit.io.pairsets import write_pair_set

    if output.suffix != ".h5":
        raise SfmkitError(f"the pair set must end in .h5, got {output}")
    start = time.perf_counter()
    if digits:
        from sfmkit.synth.digits import digits_pair_set

        if labels:
            raise SfmkitError("give either labels files or --digits, not both")
        side = 60 if size == 128 else size  # the paper's 60 x 60 unless --size is given
        conf: Any = {"digits": digits, "source": source, "split": split, "seed": seed, "size": side}
        data = digits_pair_set(digits, source=source, split=split, seed=seed, size=side)
        kind = "digits"
    else:
        from sfmkit.labels.pairs import ScenePairConf, scene_pair_set

        if not labels:
            raise SfmkitError("give labels files (from 'sfmkit build-gl3d-labels') or --digits N")
        missing = [p for p in labels if not p.is_file()]
        if missing:
            raise SfmkitError(
                f"labels file {missing[0]} does not exist; make it with 'sfmkit build-gl3d-labels'"
            )
        conf = ScenePairConf(
            size=size, max_positives=max_positives, same_scene_negatives=same_scene, seed=seed
        )
        data = scene_pair_set(labels, conf)
        kind = "labels"
    from sfmkit.utils.config import conf_to_dict

    config = conf if isinstance(conf, dict) else conf_to_dict(conf)
    write_pair_set(output, data, {**config, "labels": [str(p) for p in labels or []]}, kind)
    counts = {"images": len(data.images), "pairs": len(data), "same": int(data.same.sum())}
    rows = [(k, v) for k, v in counts.items()]
    finish(output.parent, "build-pair-set", config, output, time.perf_counter() - start, counts, rows)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_cmd)
    app.command("make-night")(make_night_cmd)
    app.command("build-gl3d-labels")(labels_cmd)
    app.command("build-retrieval-set")(build_retrieval_set_cmd)
    app.command("build-patches")(build_patches_cmd)
    app.command("build-localize-set")(build_localize_set_cmd)
    app.command("build-pair-set")(build_pair_set_cmd)
