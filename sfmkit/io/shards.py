"""Stage files written in shards by Ray tasks (``--executor ray``) and merged by one writer.

Each task gets a group of items (images or pairs) and writes them to its own shard,
``shards/<stage file stem>/<hash of the group>.h5`` beside the stage file, in the stage file's
own layout, config and input identity; a retried task resumes its shard (its writer refuses a
shard made with other options or from other inputs). The driver copies the group's items of
every finished shard into the stage file through the stage's single
:class:`~sfmkit.io.h5.ItemWriter`, then deletes the shard, so the stage file ends up as the
local executor writes it.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfmkit.io.h5 import COMPLETE, H5Reader, ItemWriter
from sfmkit.utils.executor import ExecutorConf, chunks, run_ray, start_ray
from sfmkit.utils.progress import bar


def shard_folder(path: Path) -> Path:
    """The folder of the shards of stage file ``path``."""
    return Path(path).parent / "shards" / Path(path).stem


def shard_name(group: Sequence[Any]) -> str:
    """The file name of the shard of a group of items: a digest of the items, so that a shard
    left by an interrupted run is only ever resumed by a task of the very same group."""
    text = "\n".join("\0".join(item) if isinstance(item, tuple) else str(item) for item in group)
    return hashlib.sha1(text.encode()).hexdigest()[:16] + ".h5"


def merge_shard(writer: ItemWriter, shard: Path, stage: str, depth: int, group: Sequence[Any]) -> int:
    """Copy the items of ``group`` found complete in ``shard`` (datasets and attributes) into
    ``writer``'s file."""
    wanted = {item if isinstance(item, tuple) else (item,) for item in group}
    merged = 0
    with H5Reader(shard, stage) as reader:
        for key in reader.items(depth):
            if key not in wanted:
                continue
            attrs = {k: v for k, v in reader.attrs(key).items() if k != COMPLETE}
            writer.write(key, reader.datasets(key), attrs)
            merged += 1
    writer.flush()
    return merged


def run_sharded(
    executor: ExecutorConf,
    task: Callable[..., tuple[str, int]],
    args: tuple[Any, ...],
    items: Sequence[Any],
    writer: ItemWriter,
    stage: str,
    depth: int,
    label: str,
) -> int:
    """Run ``task(*args, group, shard_path) -> (shard_path, items done)`` as one Ray task per
    group of ``items`` and merge each finished shard into ``writer``; returns the items merged."""
    ray = start_ray(executor)
    groups = chunks(items, executor, ray.cluster_resources().get("CPU", 1))
    folder = shard_folder(writer.path).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    shards = {str(folder / shard_name(group)): group for group in groups}
    jobs = [(*args, group, shard) for shard, group in shards.items()]
    merged = 0
    with writer, bar(f"{label} (ray, {len(jobs)} tasks)", total=len(items)) as progress:
        for shard, count in run_ray(executor, task, jobs):
            merged += merge_shard(writer, Path(shard), stage, depth, shards[shard])
            Path(shard).unlink()
            progress.advance(count)
    remove_shards(writer.path)
    return merged


def prepare_shards(path: Path, executor: ExecutorConf, overwrite: bool) -> None:
    """What a stage does before it touches its file ``path``: start Ray for the Ray executor (so
    that a Ray that cannot start costs nothing), and delete the shards this run will not resume
    (all of them with ``overwrite`` or the local executor)."""
    if executor.kind == "ray":
        start_ray(executor)
    if overwrite or executor.kind == "local":
        remove_shards(path)


def remove_shards(path: Path) -> None:
    """Delete the shards of stage file ``path`` (and the ``shards`` folder once empty)."""
    folder = shard_folder(path)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.is_dir() and not any(folder.parent.iterdir()):
        folder.parent.rmdir()
