"""HDF5 stage files: naming, config attributes, resumable item-by-item writing.

Layout rules (see docs/architecture.md):

* one group per item: ``/<image>`` for per-image stages, ``/<image0>/<image1>`` for pairs;
  image names are encoded once by :func:`encode_name` (``/`` -> ``%2F``);
* an item is complete only when its ``complete`` attribute is set, which happens last;
  groups without it are removed when the file is reopened, so an interrupted run never
  leaves a half-written item that reads as done;
* file attributes carry the schema version, the stage and the resolved config (JSON); a file
  made with another config is refused unless the caller asks to overwrite it;
* exactly one writer per file: :class:`ItemWriter`, which opens the file only to flush a
  batch of finished items, so that killing the process while it computes loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sfmkit.errors import ConfigError, DamagedFileError, SfmkitError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
COMPLETE = "complete"

#: What h5py raises on a file damaged in the middle (a bad B-tree, heap or checksum).
_DAMAGE = (OSError, KeyError, RuntimeError, ValueError)


def _is_damage(exc: BaseException) -> bool:
    """Whether an h5py error means a damaged file: an OSError that carries an errno is a lock,
    a permission or a full disk instead."""
    return isinstance(exc, _DAMAGE) and not (isinstance(exc, OSError) and exc.errno is not None)


def encode_name(name: str) -> str:
    """HDF5-safe key for an image name (reversible; ``/`` and ``%`` are escaped)."""
    return name.replace("%", "%25").replace("/", "%2F")


def decode_name(key: str) -> str:
    """Inverse of :func:`encode_name`."""
    return key.replace("%2F", "/").replace("%25", "%")


def item_path(key: tuple[str, ...]) -> str:
    """Group path of an item: ``/<enc(name0)>[/<enc(name1)>]``."""
    return "/".join(encode_name(k) for k in key)


def check_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SfmkitError(f"cannot create output folder {folder}: {exc.strerror}; choose another -o") from exc
    probe = folder / f".sfmkit-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SfmkitError(
            f"output folder {folder} is not writable ({exc.strerror}); choose another -o"
        ) from exc


#: Identity attributes that name another file; stored relative to the stage file's folder, so
#: an output folder can be moved or copied and resumed.
REFERENCE_KEYS = ("features", "matches", "verified", "source_features")


def file_reference(target: Path, stage_file: Path) -> str:
    """How a stage file records ``target``: relative to the stage file's folder when ``target``
    lies inside that folder (an output folder moved or copied whole stays valid), else its
    absolute path (a file elsewhere stays found when the output folder moves)."""
    target, folder = Path(target).resolve(), Path(stage_file).resolve().parent
    return target.relative_to(folder).as_posix() if target.is_relative_to(folder) else str(target)


def resolve_reference(value: str, stage_file: Path) -> Path:
    """The file a recorded reference names (a relative one from the real folder of the stage
    file, symbolic links resolved)."""
    path = Path(value)
    return path if path.is_absolute() else Path(stage_file).resolve().parent / path


def read_file_attrs(path: Path) -> dict[str, Any]:
    """File attributes with ``config`` decoded from JSON."""
    with _open_readonly(Path(path)) as f:
        attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    if "config" in attrs:
        attrs["config"] = json.loads(attrs["config"])
    return attrs


def _open_readonly(path: Path) -> h5py.File:
    if not path.is_file():
        raise SfmkitError(f"{path} does not exist; run the stage that makes it first")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SfmkitError(f"{path} is not a readable HDF5 file ({exc}); recompute it") from exc


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class ItemWriter:
    """The single writer of one stage file.

    Args:
        path: the HDF5 file.
        stage: stage name stored as an attribute (``features``, ``matches``, ...).
        config_json: canonical JSON of the resolved config.
        depth: 1 when items are images, 2 when they are image pairs.
        overwrite: delete an existing file instead of resuming it.
        identity: file attributes that, like the config, must match to resume the file (the
            image folder, the input file, a weights checksum): reusing items computed from
            other inputs is refused.
        extra_attrs: further, informational file attributes.
        flush_every: items buffered before they are written.
        flush_seconds: buffered items are also written when this much time has passed.
    """

    def __init__(
        self,
        path: Path,
        stage: str,
        config_json: str,
        *,
        depth: int = 1,
        overwrite: bool = False,
        identity: dict[str, str] | None = None,
        extra_attrs: dict[str, Any] | None = None,
        flush_every: int = 1,
        flush_seconds: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.depth = depth
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._buffer: list[tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, Any]]] = []
        self._last_flush = time.monotonic()
        check_writable_dir(self.path.parent)
        if overwrite and self.path.exists():
            self.path.unlink()
        self._open_or_create(stage, config_json, identity or {}, extra_attrs or {})
        self.done = self._scan_complete()
        self._drop_damaged()

    def _open_or_create(
        self, stage: str, config_json: str, identity: dict[str, str], extra: dict[str, Any]
    ) -> None:
        if self.path.exists():
            try:
                attrs = read_file_attrs(self.path)
            except SfmkitError as exc:
                if isinstance(exc.__cause__, OSError) and not _is_damage(exc.__cause__):
                    raise  # locked by another process, a permission: not a damaged file
                self._move_aside(exc)
                attrs = None
            if attrs is not None:
                self._check_compatible(attrs, stage, config_json, identity)
                with h5py.File(self.path, "a") as f:
                    for key, value in extra.items():
                        f.attrs[key] = value
                return
        self._create(stage, config_json, {**identity, **extra})

    def _create(self, stage: str, config_json: str, attrs: dict[str, Any], path: Path | None = None) -> None:
        with h5py.File(path or self.path, "w") as f:
            f.attrs["sfmkit_schema"] = SCHEMA_VERSION
            f.attrs["stage"] = stage
            f.attrs["config"] = config_json
            for key, value in attrs.items():
                f.attrs[key] = value

    def _move_aside(self, reason: object) -> Path:
        """Rename a damaged file to ``<name>.corrupt-<time>``; a fresh file is made by the caller."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        self.path.rename(aside)
        logger.warning(
            "%s is damaged (%s); moved it to %s and recomputing its items (delete that copy once "
            "this run has finished)",
            self.path,
            reason,
            aside,
        )
        return aside

    def _check_compatible(
        self, attrs: dict[str, Any], stage: str, config_json: str, identity: dict[str, str]
    ) -> None:
        if attrs.get("stage") != stage or attrs.get("sfmkit_schema") != SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} is not an sfmkit {stage} file of schema {SCHEMA_VERSION} "
                f"(found stage={attrs.get('stage')!r}, schema={attrs.get('sfmkit_schema')!r}); "
                "delete it or pass --overwrite"
            )
        if json.dumps(attrs.get("config"), sort_keys=True) != config_json:
            raise ConfigError(
                f"{self.path} was made with another configuration ({attrs.get('config')}); "
                "pass --overwrite to recompute it, or use another output folder"
            )
        for key, value in identity.items():
            old = attrs.get(key)
            if old != value and key in REFERENCE_KEYS and isinstance(old, str) and old:
                if (
                    resolve_reference(old, self.path).resolve()
                    == resolve_reference(value, self.path).resolve()
                ):
                    continue  # the same file, recorded as an absolute path by an older sfmkit
            if old != value:
                raise ConfigError(
                    f"{self.path} was made from another {key.replace('_', ' ')} ({attrs.get(key)}, "
                    f"now {value}); pass --overwrite to recompute it, or use another output folder"
                )

    def _scan_complete(self) -> set[tuple[str, ...]]:
        """Complete item keys; incomplete items (an interrupted write) are deleted. A file
        whose item tree cannot be read (damaged in the middle) is recovered (:meth:`_recover`)."""
        try:
            return self._scan(self.path)
        except _DAMAGE as exc:
            if not _is_damage(exc):
                raise
            return self._recover(exc)

    def _recover(self, exc: BaseException) -> set[tuple[str, ...]]:
        """Move a damaged file aside and copy its readable complete items into a fresh one."""
        attrs = read_file_attrs(self.path)
        aside = self._move_aside(exc)
        config = json.dumps(attrs.pop("config", None), sort_keys=True)
        stage = str(attrs.pop("stage", ""))
        attrs.pop("sfmkit_schema", None)
        fresh = self.path.with_name(f".{self.path.name}.recovering")
        self._create(stage, config, attrs, fresh)
        kept = _salvage(aside, fresh, self.depth)
        os.replace(fresh, self.path)  # a kill while salvaging leaves no half-copied file behind
        logger.warning("%s: kept %d readable item(s) of the damaged file", self.path, kept)
        return self._scan(self.path)

    def _scan(self, path: Path) -> set[tuple[str, ...]]:
        done: set[tuple[str, ...]] = set()
        with h5py.File(path, "a") as f:
            stale = []
            for key, group in _walk(f, self.depth):
                (done.add(key) if group.attrs.get(COMPLETE, False) else stale.append(group.name))
            for name in stale:
                del f[name]
        if stale:
            logger.info("%s: removed %d incomplete item(s) of an interrupted run", path, len(stale))
        return done

    def _drop_damaged(self) -> None:
        """Delete the items a reader found damaged (see :func:`_note_damaged`), to recompute them."""
        note = _damaged_note(self.path)
        if not note.is_file():
            return
        taken = note.with_name(f"{note.name}.{os.getpid()}")
        note.rename(taken)  # notes a reader appends from now on wait for the next writer
        keys: set[tuple[str, ...]] = set()
        for line in taken.read_text().splitlines():
            try:
                keys.add(tuple(json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # half a line, from a reader killed while writing it
        try:
            with h5py.File(self.path, "a") as f:
                for key in keys:
                    if item_path(key) in f:
                        del f[item_path(key)]
        except _DAMAGE as exc:  # the damage reaches the file's structure: copy what reads well
            if not _is_damage(exc):
                raise
            self.done = self._recover(exc)
        self.done -= keys
        taken.unlink()
        logger.warning("%s: recomputing %d damaged item(s)", self.path, len(keys))

    def pending(self, keys: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """``keys`` not yet written (a pair also counts as written when stored reversed)."""
        return [k for k in keys if k not in self.done and tuple(reversed(k)) not in self.done]

    def write(
        self,
        key: tuple[str, ...],
        datasets: dict[str, np.ndarray],
        attrs: dict[str, Any] | None = None,
    ) -> None:
        """Queue a finished item; it is on disk after the next flush."""
        self._buffer.append((key, datasets, attrs or {}))
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the queued items, each whole, then close the file. A file found damaged
        while writing is recovered (:meth:`_recover`) and the items written again."""
        if not self._buffer:
            return
        lost: set[tuple[str, ...]] = set()
        try:
            self._write_buffer()
        except (OSError, KeyError, RuntimeError) as exc:
            if not _is_damage(exc):
                raise
            before = set(self.done)
            self.done = self._recover(exc)
            self._write_buffer()
            lost = before - self.done
        self._buffer.clear()
        self._last_flush = time.monotonic()
        if lost:  # the caller's list of items to do no longer holds them: make it start over
            raise DamagedFileError(
                f"{self.path} was damaged and {len(lost)} finished item(s) could not be kept (first: "
                f"{'/'.join(sorted(lost)[0])}); run the command again to recompute them ('reconstruct' "
                "does so by itself)"
            )

    def _write_buffer(self) -> None:
        with h5py.File(self.path, "a") as f:
            for key, datasets, attrs in self._buffer:
                path = item_path(key)
                if path in f:
                    del f[path]
                group = f.create_group(path)
                for name, array in datasets.items():
                    _create_dataset(group, name, np.asarray(array))
                for name, value in attrs.items():
                    group.attrs[name] = value
                group.attrs[COMPLETE] = True
                self.done.add(key)

    def set_attrs(self, **attrs: Any) -> None:
        """Set file attributes (JSON-encodes dicts and lists)."""
        self.flush()
        with h5py.File(self.path, "a") as f:
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value

    def set_item_attrs(self, updates: Iterable[tuple[tuple[str, ...], dict[str, Any]]]) -> None:
        """Set attributes of already written items."""
        self.flush()
        with h5py.File(self.path, "a") as f:
            for key, attrs in updates:
                for name, value in attrs.items():
                    f[item_path(key)].attrs[name] = value

    def __enter__(self) -> ItemWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _damaged_note(path: Path) -> Path:
    real = Path(path).resolve()
    return real.with_name(f"{real.name}.damaged")


def _note_damaged(path: Path, key: tuple[str, ...]) -> bool:
    """Record that item ``key`` of ``path`` failed its checksum, for the next writer to drop."""
    try:
        with _damaged_note(path).open("a") as f:
            f.write(json.dumps(list(key)) + "\n")
        return True
    except OSError:
        return False


def _create_dataset(group: h5py.Group, name: str, array: np.ndarray) -> None:
    """A dataset with a Fletcher-32 checksum (non-empty arrays), so damaged data is detected
    on reading instead of being used."""
    if array.ndim and array.size:
        group.create_dataset(name, data=array, fletcher32=True)
    else:
        group.create_dataset(name, data=array)


def _salvage(damaged: Path, target: Path, depth: int) -> int:
    """Copy the complete items of ``damaged`` that can be read whole into ``target``."""
    kept = 0
    try:
        src = h5py.File(damaged, "r")
    except OSError:
        return 0
    with src, h5py.File(target, "a") as dst:
        try:
            items = _walk(src, depth, tolerant=True)
        except _DAMAGE:
            return 0
        for key, group in items:
            try:
                if not group.attrs.get(COMPLETE, False):
                    continue
                group.visititems(_read_dataset)
                path = item_path(key)
                if "/" in path:
                    dst.require_group(path.rsplit("/", 1)[0])
                src.copy(group, dst, name=path)
                kept += 1
            except _DAMAGE:
                if item_path(key) in dst:
                    del dst[item_path(key)]
    return kept


def _read_dataset(name: str, obj: Any) -> None:
    if isinstance(obj, h5py.Dataset):
        obj[()]


def _walk(f: h5py.File, depth: int, *, tolerant: bool = False) -> list[tuple[tuple[str, ...], h5py.Group]]:
    """Item groups at ``depth`` (1: ``/<image>``, 2: ``/<image0>/<image1>``); ``tolerant``
    skips the links of a damaged file that cannot be opened."""
    out: list[tuple[tuple[str, ...], h5py.Group]] = []

    def visit(group: h5py.Group, prefix: tuple[str, ...]) -> None:
        try:
            keys = list(group.keys())
        except _DAMAGE:
            if not tolerant:
                raise
            return
        for key in keys:
            try:
                child = group[key]
            except _DAMAGE:
                if not tolerant:
                    raise
                continue
            if isinstance(child, h5py.Group):
                k = (*prefix, decode_name(key))
                if len(k) == depth:
                    out.append((k, child))
                else:
                    visit(child, k)

    visit(f, ())
    return out


def list_items(path: Path, depth: int) -> list[tuple[str, ...]]:
    """Complete items of a stage file; ``depth`` 1 for images, 2 for pairs."""
    with _open_readonly(Path(path)) as f:
        return [key for key, group in _walk(f, depth) if group.attrs.get(COMPLETE, False)]


def json_attr(path: Path, name: str, default: Any = None) -> Any:
    """A JSON-encoded file attribute (as written by :meth:`ItemWriter.set_attrs`)."""
    with _open_readonly(Path(path)) as f:
        if name not in f.attrs:
            return default
        value = _attr_value(f.attrs[name])
    return json.loads(value) if isinstance(value, str) else value


class H5Reader:
    """Read-only access to the items of a stage file.

    Example:
        >>> with H5Reader(path) as r:
        ...     kpts = r.array(("a.jpg",), "keypoints")
    """

    def __init__(self, path: Path, stage: str | None = None) -> None:
        self.path = Path(path)
        self.stage = stage
        self._file: h5py.File | None = None

    def __enter__(self) -> H5Reader:
        self._file = _open_readonly(self.path)
        found = _attr_value(self._file.attrs.get("stage", ""))
        if self.stage is not None and found != self.stage:
            self._file.close()
            raise SfmkitError(f"{self.path} is not an sfmkit {self.stage} file (stage {found!r})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            raise RuntimeError("H5Reader used outside its `with` block")
        return self._file

    def has(self, key: tuple[str, ...]) -> bool:
        path = item_path(key)
        with self._guard(key, "item"):
            return path in self.file and bool(self.file[path].attrs.get(COMPLETE, False))

    def array(self, key: tuple[str, ...], name: str) -> np.ndarray:
        """Dataset ``name`` (may contain ``/``) of item ``key``."""
        with self._guard(key, name):
            return self.file[f"{item_path(key)}/{name}"][()]

    def optional(self, key: tuple[str, ...], name: str) -> np.ndarray | None:
        path = f"{item_path(key)}/{name}"
        with self._guard(key, name):
            return self.file[path][()] if path in self.file else None

    def shape(self, key: tuple[str, ...], name: str) -> tuple[int, ...]:
        """Shape of dataset ``name`` of item ``key``, without reading it."""
        with self._guard(key, name):
            return tuple(self.file[f"{item_path(key)}/{name}"].shape)

    def datasets(
        self, key: tuple[str, ...], skip: Callable[[str], bool] = lambda name: False
    ) -> dict[str, np.ndarray]:
        """Every dataset of item ``key`` by its path inside the item, except those ``skip``s."""
        out: dict[str, np.ndarray] = {}

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and not skip(name):
                out[name] = obj[()]

        with self._guard(key, "datasets"):
            self.file[item_path(key)].visititems(visit)
        return out

    def attrs(self, key: tuple[str, ...]) -> dict[str, Any]:
        with self._guard(key, "attributes"):
            return {k: _attr_value(v) for k, v in self.file[item_path(key)].attrs.items()}

    def items(self, depth: int) -> list[tuple[str, ...]]:
        with self._guard((), "item list"):
            return [k for k, g in _walk(self.file, depth) if g.attrs.get(COMPLETE, False)]

    @contextmanager
    def _guard(self, key: tuple[str, ...], what: str) -> Iterator[None]:
        """Turn h5py's errors on damaged data into :class:`DamagedFileError` naming the file,
        the item and what to do; the item is noted so that its stage recomputes it."""
        try:
            yield
        except _DAMAGE as exc:
            if not _is_damage(exc):
                raise
            if isinstance(exc, KeyError) and "doesn't exist" in str(exc):
                raise  # a dataset this file does not have: not damage
            noted = bool(key) and _note_damaged(self.path, key)
            todo = (
                "run the command that made this file again: it recomputes that item ('reconstruct' "
                "does so by itself)"
                if noted
                else "delete the file (or pass --overwrite) and run the command that made it again"
            )
            where = f"the {what} of {'/'.join(key)}" if key else f"its {what}"
            raise DamagedFileError(f"{self.path}: {where} is damaged ({exc}); {todo}") from exc

    def pair_key(self, pair: tuple[str, str]) -> tuple[tuple[str, str], bool]:
        """The key ``pair`` is stored under, and whether it is stored reversed."""
        if self.has(pair):
            return pair, False
        if self.has((pair[1], pair[0])):
            return (pair[1], pair[0]), True
        raise SfmkitError(f"{self.path} has nothing for the pair {pair}; run the stage that makes it first")
