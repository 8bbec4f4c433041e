"""Image pairs: generation (exhaustive, sequential window), the ``--pairs`` spec, pairs files.

A pairs file has one pair per line, ``name0 name1`` separated by a space (hloc's format), or
by a tab when a name contains white space or starts with ``#``; names are kept exactly (a
leading or trailing space is part of the name). A line that starts with ``#`` and holds no
tab is a comment. Image names with a tab, a newline or a carriage return cannot be written
to such a file: :func:`check_names` refuses them before any work starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sfmkit.errors import SfmkitError

logger = logging.getLogger(__name__)

Pair = tuple[str, str]

#: Characters a pairs file (and a COLMAP text model) cannot hold inside an image name.
UNSAFE_NAME_CHARS = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}

#: (path, size, mtime) of pairs files already warned about, so a file read by several stages
#: in one run warns once.
_WARNED: set[tuple[str, int, int]] = set()


def check_names(names: Iterable[str], where: Path | str) -> None:
    """Refuse image names that no pairs file can hold (a tab, a newline, a carriage return)."""
    for name in names:
        for char, what in UNSAFE_NAME_CHARS.items():
            if char in name:
                raise SfmkitError(
                    f"the image {name!r} in {where} has {what} in its name, which sfmkit's pairs "
                    "files and COLMAP models cannot hold; rename the file"
                )


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


def _parse_line(line: str) -> list[str] | None:
    """The names of one line (None: blank or comment). Tab-separated lines keep their names
    exactly (empty fields at the ends dropped); others split on runs of white space."""
    if not line.strip():
        return None
    if "\t" in line:
        fields = line.split("\t")
        while fields and not fields[-1].strip():
            fields.pop()
        while fields and not fields[0].strip():
            fields.pop(0)
        return fields if len(fields) != 1 else fields[0].split()  # a stray tab at an end
    if line.lstrip().startswith("#"):
        return None
    return line.split()


def _known_name(name: str, known: set[str]) -> str:
    """``name`` as the images know it: exact, else without surrounding white space."""
    return name if name in known or name.strip() not in known else name.strip()


def read_pairs(path: Path, known: Iterable[str] | None = None) -> list[Pair]:
    """Read a pairs file; with ``known``, pairs naming other images are dropped with a warning
    (once per file and process)."""
    path = Path(path)
    if not path.is_file():
        raise SfmkitError(f"pairs file {path} does not exist")
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text().split("\n"), 1):
        fields = _parse_line(line.rstrip("\r"))
        if fields is None:
            continue
        if len(fields) != 2 or not all(fields):
            raise SfmkitError(
                f"{path}:{number}: expected two image names per line, got {len(fields)} "
                "(separate names that contain spaces with a tab)"
            )
        pairs.append((fields[0], fields[1]))
    result = unique_pairs(pairs)
    if known is not None:
        names = set(known)
        result = unique_pairs((_known_name(a, names), _known_name(b, names)) for a, b in result)
        unknown = [p for p in result if p[0] not in names or p[1] not in names]
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if unknown and key not in _WARNED:
            _WARNED.add(key)
            logger.warning(
                "%s: %d pair(s) name images without features, ignored (first: %s)",
                path,
                len(unknown),
                unknown[0],
            )
        result = [p for p in result if p[0] in names and p[1] in names]
    if not pairs:
        raise SfmkitError(f"{path} lists no image pair; write one pair of image names per line")
    if not result:
        example = f" (e.g. {pairs[0][0]} {pairs[0][1]})"
        raise SfmkitError(
            f"{path} lists no usable image pair: its {len(pairs)} pair(s) name images that are not "
            f"in the image folder{example}; write image names relative to the image folder"
        )
    return result


def _needs_tab(name: str) -> bool:
    return any(c.isspace() for c in name) or name.lstrip().startswith("#")


def write_pairs(path: Path, pairs: Iterable[Pair]) -> Path:
    """Write a pairs file that :func:`read_pairs` reads back exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = list(pairs)
    check_names({n for p in pairs for n in p}, path)
    lines = [f"{a}\t{b}" if _needs_tab(a) or _needs_tab(b) else f"{a} {b}" for a, b in pairs]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class PairsSpec:
    """A parsed ``--pairs`` value.

    Attributes:
        kind: ``exhaustive``, ``sequential``, ``retrieval`` or ``file``.
        n: the window of ``sequential:N`` (default 5) or the K of ``retrieval:K`` (default 10).
        path: the pairs file of ``file``.
    """

    kind: str
    n: int = 0
    path: Path | None = None


def _count(spec: str, word: str, default: int) -> int:
    letter = "K" if word == "retrieval" else "N"
    _, _, value = spec.partition(":")
    try:
        n = int(value) if value else default
    except ValueError:
        raise SfmkitError(f"--pairs {spec!r}: write {word}:{letter} with an integer {letter}") from None
    if n < 1:
        raise SfmkitError(f"--pairs {spec!r}: {letter} must be at least 1 (e.g. {word}:{default})")
    return n


def parse_pairs_spec(spec: str, *, retrieval: bool = False) -> PairsSpec:
    """Parse ``--pairs``: ``exhaustive``, ``sequential[:N]``, ``retrieval[:K]`` (only where
    ``retrieval`` is allowed, i.e. ``reconstruct``) or an existing pairs file. Raises
    :class:`SfmkitError` at once for a malformed value or a missing file."""
    head = spec.partition(":")[0]
    if spec == "exhaustive":
        return PairsSpec("exhaustive")
    if head == "sequential" and not Path(spec).is_file():
        return PairsSpec("sequential", _count(spec, "sequential", 5))
    if head == "retrieval" and not Path(spec).is_file():
        if not retrieval:
            raise SfmkitError(
                f"--pairs {spec!r}: retrieval pairs are made by 'sfmkit retrieve' (or 'sfmkit reconstruct "
                "--pairs retrieval:K'); pass the pairs file it wrote"
            )
        return PairsSpec("retrieval", _count(spec, "retrieval", 10))
    path = Path(spec)
    if not path.is_file() and (path.suffix or "/" in spec):
        raise SfmkitError(f"--pairs: the pairs file {spec} does not exist")
    if not path.is_file():
        extra = ", 'retrieval:K'" if retrieval else ""
        raise SfmkitError(
            f"--pairs {spec!r} is neither 'exhaustive', 'sequential:N'{extra} nor an existing pairs file"
        )
    return PairsSpec("file", path=path)


def make_pairs(spec: str | PairsSpec, names: Sequence[str], out_dir: Path) -> Path:
    """Resolve ``--pairs``: ``exhaustive``, ``sequential:N`` or a pairs file.

    Generated pairs are written to ``out_dir/pairs-<spec>.txt`` so later stages read a file.
    """
    parsed = parse_pairs_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "exhaustive":
        return write_pairs(Path(out_dir) / "pairs-exhaustive.txt", exhaustive_pairs(names))
    if parsed.kind == "sequential":
        return write_pairs(
            Path(out_dir) / f"pairs-sequential{parsed.n}.txt", sequential_pairs(names, parsed.n)
        )
    if parsed.kind != "file" or parsed.path is None:
        raise SfmkitError(f"--pairs {spec!r}: retrieval pairs are made by the retrieve stage")
    read_pairs(parsed.path, names)  # validates
    return parsed.path
