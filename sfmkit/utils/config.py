"""Frozen-dataclass configurations: strict (de)serialisation and output-file tags.

Every stage takes a frozen dataclass. Named presets live beside each stage; an option the
user changes yields a new config whose output file name gets a short hash suffix, so two
different settings never write to the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

from sfmkit.errors import ConfigError

T = TypeVar("T")


def conf_to_dict(conf: Any) -> dict[str, Any]:
    """The config as a plain JSON-able dict (nested dataclasses included); a dict of configs
    becomes a dict of dicts."""
    if isinstance(conf, dict):
        return {k: conf_to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in conf.items()}
    return json.loads(json.dumps(dataclasses.asdict(conf), default=str))


def conf_to_json(conf: Any) -> str:
    """Canonical JSON (sorted keys) used for file attributes and hashing."""
    return json.dumps(conf_to_dict(conf), sort_keys=True)


def replace(conf: T, **changes: Any) -> T:
    """``dataclasses.replace`` that drops ``None`` values (an option the user left unset)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    names = {f.name for f in dataclasses.fields(conf)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {type(conf).__name__}")
    return dataclasses.replace(conf, **changes)  # type: ignore[type-var]


def conf_tag(conf: Any, preset: Any | None) -> str:
    """File-name tag: the preset's name, plus a hash when ``conf`` differs from the preset."""
    name = conf.name
    if preset is not None and conf_to_json(conf) == conf_to_json(preset):
        return name
    digest = hashlib.sha1(conf_to_json(conf).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def derived_path(
    out_dir: Path, prefix: str, source: Path, source_prefix: str, conf: Any, preset: Any | None
) -> Path:
    """Output file of a stage that reads ``source`` (``<source_prefix>-<source tag>.h5``) with
    ``conf``: ``out_dir/<prefix>-<source tag>_<conf tag>.h5``, so that every input file and
    setting gets its own output."""
    source_tag = Path(source).stem.removeprefix(f"{source_prefix}-")
    return Path(out_dir) / f"{prefix}-{source_tag}_{conf_tag(conf, preset)}.h5"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_flatten(child, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


#: Settings that change how fast a result is computed, not what it is: a finished output made
#: with another value is reused.
SPEED_ONLY = ("num_threads", "workers")


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (nested keys dotted), except the
    :data:`SPEED_ONLY` ones."""
    a = _flatten(json.loads(json.dumps(old, default=str)))
    b = _flatten(json.loads(json.dumps(new, default=str)))
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and key.rsplit(".", 1)[-1] not in SPEED_ONLY
    ]


def same_config(where: str, previous: dict[str, Any], config: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``config`` equals the ``previous`` one of a finished output (speed-only settings
    aside); when it does not and ``overwrite`` is off, :class:`ConfigError` names the settings
    that differ. ``where`` begins the message (``"out/ holds a model"``)."""
    differences = config_differences(previous, config)
    if differences and not overwrite:
        more = f"; and {len(differences) - 6} more" if len(differences) > 6 else ""
        raise ConfigError(
            f"{where} made with other options ({'; '.join(differences[:6])}{more}); pass --overwrite "
            "to recompute it with the new ones, or choose another output folder (-o)"
        )
    return not differences
