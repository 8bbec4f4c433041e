"""``report.json``: config, counts and per-stage timings written by every command.

One ``report.json`` per output folder; each command writes (or replaces) its own section, so
running ``extract``, ``match``, ... into one folder leaves one report holding all of them.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

import sfmkit
from sfmkit.utils.files import write_text_atomic


def _versions() -> dict[str, str]:
    import pycolmap
    import torch

    return {
        "sfmkit": sfmkit.__version__,
        "pycolmap": pycolmap.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_report(out_dir: Path, command: str, *, drop: tuple[str, ...] = (), **section: Any) -> Path:
    """Write the ``command`` section of ``out_dir/report.json``; other sections are kept, except
    those named in ``drop``."""
    path = Path(out_dir) / "report.json"
    report: dict[str, Any] = {}
    if path.is_file():
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            report = {}
    for name in drop:
        report.pop(name, None)
    report["versions"] = _versions()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    # a section written while its command still runs (status "running") says when, not "finished"
    stamp = "written" if section.get("status") == "running" else "finished"
    report[command] = {stamp: now, **section}
    return write_text_atomic(path, json.dumps(report, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
