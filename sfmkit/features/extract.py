"""The extraction stages: images -> ``features-<tag>.h5`` (local features, :func:`extract`) and
images -> ``global-<tag>.h5`` (global descriptors for retrieval, :func:`extract_global`); both
resumable, through one per-image loop (:func:`extract_items`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sfmkit.errors import ImageReadError, SfmkitError
from sfmkit.features import CONFS, FeatureConf, extraction_size, make_extractor
from sfmkit.features.global_descriptors import GLOBAL_CONFS, GlobalConf, GlobalExtractor
from sfmkit.io.h5 import ItemWriter, json_attr, read_file_attrs
from sfmkit.io.images import (
    DEFAULT_MAX_PIXELS,
    FINGERPRINT,
    LoadedImage,
    check_fingerprints,
    image_fingerprint,
    image_size,
    list_images,
    read_image,
    stored_fingerprints,
)
from sfmkit.io.shards import prepare_shards, run_sharded
from sfmkit.models.weights import sha256_file
from sfmkit.utils.config import conf_tag, conf_to_json
from sfmkit.utils.device import resolve_device
from sfmkit.utils.executor import LOCAL, ExecutorConf
from sfmkit.utils.progress import track

logger = logging.getLogger(__name__)


def features_path(conf: FeatureConf, out_dir: Path) -> Path:
    """Output file of ``conf``: the preset name, plus a hash if options were changed."""
    return Path(out_dir) / f"features-{conf_tag(conf, CONFS.get(conf.name))}.h5"


def weights_identity(conf: Any) -> dict[str, str]:
    """Checksums of the weights files a config names (``weights``, ``detector``,
    ``descriptor``; the shipped ones included), so features are recomputed when one changes."""
    from sfmkit.models.keypoints import SHIPPED

    out = {}
    for attr in ("weights", "detector", "descriptor"):
        value = str(getattr(conf, attr, "") or "")
        path = SHIPPED[attr] if attr in SHIPPED and value == "default" else Path(value)
        if path.suffix in (".pt", ".pth") and path.is_file():
            out["weights_sha256" if attr == "weights" else f"{attr}_sha256"] = sha256_file(path)
    return out


def _recorded_image_dir(path: Path) -> str | None:
    """The image folder an existing stage file records (None: no file, or unreadable)."""
    if not path.is_file():
        return None
    try:
        return read_file_attrs(path).get("image_dir")
    except SfmkitError:
        return None


def _resumed_size(path: Path, size: int, overwrite: bool) -> int:
    """The longer side to extract at: ``size``, or the size a file being resumed was extracted
    at, so that one file holds one size (images added to a collection can move its median
    across the threshold; they then follow the images already extracted)."""
    if overwrite or not path.is_file():
        return size
    try:
        recorded = read_file_attrs(path).get("extraction_size")
    except SfmkitError:
        return size  # unreadable: the writer deals with it
    if recorded is None or int(recorded) == size:
        return size
    recorded = int(recorded)
    logger.info("%s was extracted at %d px: the other images follow (not %d px)", path.name, recorded, size)
    return recorded


def check_weights(conf: Any) -> None:
    """Refuse, before any work, a weights option that cannot load: an unknown VGG16 source or
    a missing ``.pt`` file (``weights``, ``detector``, ``descriptor`` attributes)."""
    from sfmkit.models.weights import WEIGHT_SOURCES

    for attr in ("weights", "detector", "descriptor"):
        value = getattr(conf, attr, None)
        if value is None or value in ("default", "random"):
            continue
        if Path(value).suffix in (".pt", ".pth"):
            if not Path(value).is_file():
                raise SfmkitError(f"--weights: the {attr} file {value} does not exist; check the path")
        elif attr != "weights" or value not in WEIGHT_SOURCES:
            raise SfmkitError(
                f"unknown --weights {value!r}; use one of {', '.join(WEIGHT_SOURCES)} or a .pt file"
            )


def _prefetch(
    root: Path, names: Sequence[str], max_size: int, max_pixels: int, upscale: float
) -> Iterator[tuple[str, LoadedImage | ImageReadError]]:
    """Decode images one ahead of the consumer, in a background thread."""

    def load(name: str) -> LoadedImage | ImageReadError:
        try:
            return read_image(root / name, max_size, max_pixels, upscale)
        except ImageReadError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: list[tuple[str, Future]] = []
        for name in names:
            pending.append((name, pool.submit(load, name)))
            if len(pending) > 1:
                done, fut = pending.pop(0)
                yield done, fut.result()
        for name, fut in pending:
            yield name, fut.result()


#: at most this many images (evenly spaced in name order) give a collection's median size
SIZE_SAMPLE = 101


def median_side(images: Path, names: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> int | None:
    """The median longer side of the images ``names`` (read from the file headers of up to
    :data:`SIZE_SAMPLE` of them, unreadable ones left out; None if none is readable)."""
    step = max(1, -(-len(names) // SIZE_SAMPLE))
    sides = []
    for name in names[::step]:
        try:
            sides.append(max(image_size(Path(images) / name, max_pixels)))
        except ImageReadError:
            continue
    return int(np.median(sides)) if sides else None


def extract(
    conf: FeatureConf,
    images: Path,
    out_dir: Path,
    *,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    executor: ExecutorConf = LOCAL,
) -> Path:
    """Extract features of every image under ``images`` into ``out_dir``.

    Images already complete in the output are skipped (resume). Unreadable images are
    logged, skipped and recorded in the file attribute ``skipped`` ({name: reason}); the
    attribute ``last_run`` counts what this call computed, reused and skipped. With the Ray
    executor the images are extracted by Ray tasks into shards (:mod:`sfmkit.io.shards`) merged
    into the file, which is then the one the local executor writes. One extraction size serves
    the whole collection (:func:`sfmkit.features.extraction_size` of the images' median longer
    side: dense VGG16 extracts large captures smaller); the file records it as
    ``extraction_size``, and a resumed file keeps its size.

    Returns:
        Path of the feature file.
    """
    check_weights(conf)
    names = list_images(images, image_names).names
    size = extraction_size(conf, median_side(images, names, max_pixels))
    return _extract_stage(
        "features",
        conf,
        images,
        features_path(conf, out_dir),
        image_names,
        overwrite,
        device,
        max_pixels,
        executor,
        size,
    )


def _make(stage: str, conf: Any, device: str) -> Callable[[LoadedImage], dict[str, np.ndarray]]:
    """The per-image function of a ``features`` or ``global`` extraction."""
    if stage == "features":
        return make_extractor(conf, resolve_device(device))
    return GlobalExtractor(conf, resolve_device(device))


def _stage_attrs(stage: str, conf: Any) -> dict[str, Any] | None:
    return {"extractor": conf.kind} if stage == "features" else None


def _extract_stage(
    stage: str,
    conf: Any,
    images: Path,
    path: Path,
    image_names: Sequence[str] | None,
    overwrite: bool,
    device: str,
    max_pixels: int,
    executor: ExecutorConf,
    size: int,
) -> Path:
    """``extract`` or ``extract_global`` at the longer side ``size``: the local loop, with Ray
    tasks writing shards first."""
    prepare_shards(path, executor, overwrite)
    size = _resumed_size(path, size, overwrite)
    label = f"extract {conf.name}" if stage == "features" else "global descriptors"
    remote = None
    if executor.kind == "ray":
        args = (stage, conf, str(Path(images).resolve()), device, max_pixels, size)

        def remote(todo: list[str], writer: ItemWriter) -> int:
            return run_sharded(executor, _extract_chunk, args, todo, writer, stage, 1, label)

    return extract_items(
        path,
        stage,
        conf,
        images,
        lambda: _make(stage, conf, device),
        label=label,
        image_names=image_names,
        overwrite=overwrite,
        max_pixels=max_pixels,
        max_size=size,
        extra_attrs=_stage_attrs(stage, conf),
        remote=remote,
    )


#: test hook: a path P; in each extraction stage (``features``, ``global``) the first Ray task to
#: find ``P.<stage>`` absent creates it and kills its own worker before its second image, as a
#: node failure would (the task is then retried)
KILL_ONCE_ENV = "SFMKIT_TEST_KILL_WORKER_ONCE"


def _extract_chunk(
    stage: str, conf: Any, images: str, device: str, max_pixels: int, size: int, names: list[str], shard: str
) -> tuple[str, int]:
    """One Ray task: the ``stage`` items (local features or global descriptors) of ``names`` into
    the shard file ``shard`` (resumable)."""
    import torch

    torch.set_num_threads(1)  # one CPU per task
    marker = os.environ.get(KILL_ONCE_ENV)
    marker = f"{marker}.{stage}" if marker else None  # once per stage (features, global)

    def make() -> Callable[[LoadedImage], dict[str, np.ndarray]]:
        extractor = _make(stage, conf, device)
        if not marker or len(names) < 2 or Path(marker).exists():
            return extractor
        calls = []

        def dying(image: LoadedImage) -> dict[str, np.ndarray]:
            calls.append(1)
            if len(calls) == 2 and not Path(marker).exists():
                Path(marker).touch()
                os._exit(1)
            return extractor(image)

        return dying

    extract_items(
        Path(shard),
        stage,
        conf,
        Path(images),
        make,
        label="shard",
        image_names=names,
        max_pixels=max_pixels,
        max_size=size,
        extra_attrs=_stage_attrs(stage, conf),
    )
    return shard, len(names)


def extract_items(
    path: Path,
    stage: str,
    conf: Any,
    images: Path,
    make: Callable[[], Callable[[LoadedImage], dict[str, np.ndarray]]],
    *,
    label: str,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_size: int | None = None,
    extra_attrs: dict[str, Any] | None = None,
    remote: Callable[[list[str], ItemWriter], int] | None = None,
) -> Path:
    """The resumable per-image loop behind every extraction stage (local or global).

    Args:
        path: the HDF5 output, one item per image.
        stage: the file's stage name (checked when the file is reused).
        conf: a frozen config; stored and compared on reuse.
        max_size: the longer side images are read at (None: ``conf.max_size``); stored as the
            attribute ``extraction_size`` (the stage functions resume a file at its size).
        make: builds the per-image function (called only when something is left to do).
        label: the progress-bar title.
        remote: computes items elsewhere first (the Ray executor): given the names to do and the
            writer, it writes what it can and returns how many; the rest (unreadable images,
            which it skips) goes through the local loop.
    """
    images = Path(images)
    path = Path(path)
    listing = list_images(images, image_names)
    created = not path.exists() or overwrite
    # --overwrite: load the model before deleting the old file, so a device or weights error
    # costs nothing already computed
    extractor = make() if overwrite else None
    max_size = conf.max_size if max_size is None else max_size
    recorded_dir = _recorded_image_dir(path) if not overwrite else None
    writer = ItemWriter(
        path,
        stage,
        conf_to_json(conf),
        overwrite=overwrite,
        identity=weights_identity(conf),
        extra_attrs=extra_attrs,
    )
    if writer.done:  # resuming: the images must be those the stored items came from
        check_fingerprints(stored_fingerprints(path, listing.names), images, path, recorded_dir)
    writer.set_attrs(image_dir=str(images.resolve()), extraction_size=max_size)
    previous_skips = json_attr(path, "skipped", {}) or {}
    todo = [n for n in listing.names if (n,) not in writer.done]
    reused = len(listing.names) - len(todo)
    if reused:
        logger.info("%s: %d of %d images already extracted, resuming", path.name, reused, len(listing.names))
    skipped: dict[str, str] = {}
    computed = 0
    start = time.perf_counter()
    if todo and remote is not None:
        computed = remote(todo, writer)
        todo = [n for n in todo if (n,) not in writer.done]
    if todo:
        try:
            if extractor is None:
                extractor = make()
        except BaseException:
            if created and not writer.done:
                path.unlink(missing_ok=True)  # leave no empty file behind a device or weights error
            raise
        with writer:
            # smaller images are enlarged only for extractors that ask for it (dense VGG16)
            stream = _prefetch(images, todo, max_size, max_pixels, getattr(conf, "upscale", 1.0))
            for name, loaded in track(stream, label, total=len(todo)):
                try:
                    if isinstance(loaded, ImageReadError):
                        raise loaded
                    record = extractor(loaded)
                except ImageReadError as exc:
                    reason = str(exc) if name in str(exc) else f"{name}: {exc}"
                    logger.warning("skipping %s", reason)
                    skipped[name] = reason
                    continue
                writer.write((name,), record, {FINGERPRINT: image_fingerprint(images / name)})
                computed += 1
                logger.debug("extracted %s", name)
    listed = set(listing.names)
    all_skips = {
        k: v for k, v in {**previous_skips, **skipped}.items() if (k,) not in writer.done and k in listed
    }
    writer.set_attrs(
        skipped=all_skips,
        ignored_files=listing.ignored,
        last_run={
            "computed": computed,
            "reused": reused,
            "skipped": len(skipped),
            "seconds": round(time.perf_counter() - start, 3),
            "extraction_size": max_size,
            **({"executor": "ray"} if remote is not None else {}),
        },
    )
    return path


def global_path(conf: GlobalConf, out_dir: Path) -> Path:
    """Output file of ``conf``: the preset name, plus a hash if options were changed."""
    return Path(out_dir) / f"global-{conf_tag(conf, GLOBAL_CONFS.get(conf.name))}.h5"


def extract_global(
    conf: GlobalConf,
    images: Path,
    out_dir: Path,
    *,
    image_names: Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    executor: ExecutorConf = LOCAL,
) -> Path:
    """Global descriptors of every image under ``images`` (resumable and, with the Ray executor,
    sharded, like ``extract``)."""
    return _extract_stage(
        "global",
        conf,
        images,
        global_path(conf, out_dir),
        image_names,
        overwrite,
        device,
        max_pixels,
        executor,
        conf.max_size,
    )
