"""Image pairs: generation (exhaustive, sequential window) and pairs files.

A pairs file has one pair per line, ``name0 name1`` separated by a space (hloc's format), or
by a tab when a name contains spaces. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from sfmkit.errors import SfmkitError

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def exhaustive_pairs(names: Sequence[str]) -> list[Pair]:
    """Every unordered pair, in the order of ``names``."""
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def sequential_pairs(names: Sequence[str], window: int) -> list[Pair]:
    """Each image with the next ``window`` images (video or ordered captures)."""
    if window < 1:
        raise SfmkitError(f"the sequential window must be at least 1, got {window}")
    return [
        (names[i], names[j]) for i in range(len(names)) for j in range(i + 1, min(len(names), i + 1 + window))
    ]


def unique_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """Drop self-pairs and repeated pairs (in either order), keeping the first occurrence."""
    seen: set[frozenset[str]] = set()
    out: list[Pair] = []
    for a, b in pairs:
        key = frozenset((a, b))
        if a == b or key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out


def read_pairs(path: Path, known: Iterable[str] | None = None) -> list[Pair]:
    """Read a pairs file; with ``known``, pairs naming other images are dropped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"pairs file {path} does not exist")
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise SfmkitError(
                f"{path}:{number}: expected two image names per line, got {len(fields)} "
                "(separate names that contain spaces with a tab)"
            )
        pairs.append((fields[0].strip(), fields[1].strip()))
    result = unique_pairs(pairs)
    if known is not None:
        names = set(known)
        unknown = [p for p in result if p[0] not in names or p[1] not in names]
        if unknown:
            logger.warning(
                "%s: %d pair(s) name images without features, ignored (first: %s)",
                path,
                len(unknown),
                unknown[0],
            )
        result = [p for p in result if p[0] in names and p[1] in names]
    if not result:
        raise SfmkitError(f"{path} lists no usable image pair")
    return result


def write_pairs(path: Path, pairs: Iterable[Pair]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{a}\t{b}" if (" " in a or " " in b) else f"{a} {b}" for a, b in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_pairs(spec: str, names: Sequence[str], out_dir: Path) -> Path:
    """Resolve ``--pairs``: ``exhaustive``, ``sequential:N`` or a pairs file.

    Generated pairs are written to ``out_dir/pairs-<spec>.txt`` so later stages read a file.
    """
    if spec == "exhaustive":
        return write_pairs(Path(out_dir) / "pairs-exhaustive.txt", exhaustive_pairs(names))
    if spec.startswith("sequential"):
        _, _, value = spec.partition(":")
        try:
            window = int(value) if value else 5
        except ValueError:
            raise SfmkitError(f"--pairs {spec!r}: write sequential:N with an integer N") from None
        return write_pairs(Path(out_dir) / f"pairs-sequential{window}.txt", sequential_pairs(names, window))
    path = Path(spec)
    if not path.is_file():
        raise SfmkitError(
            f"--pairs {spec!r} is neither 'exhaustive', 'sequential:N' nor an existing pairs file "
            "('sfmkit reconstruct' also takes 'retrieval:K')"
        )
    read_pairs(path, names)  # validates
    return path
