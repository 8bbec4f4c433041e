"""A corpus of bad inputs, bad options and damaged outputs, and the checks each case must pass.

Every case builds what it needs in a fresh work folder (small rendered images, a copy of a
finished output), runs one ``sfmkit`` command through a caller-given ``invoke`` (in-process
for the tests, a subprocess for ``benchmarks/robustness.py``) and is judged on:

* the exit status it should have (0, or 2 for a user error) and no traceback;
* a message naming the file or option at fault (``needle``);
* nothing silently dropped (a successful run registers every valid image);
* nothing already computed lost: a failing command leaves every file of the output it was
  pointed at byte-identical (a damaged file moved aside counts as kept);
* bad options failing fast: before any extraction (no feature file appears).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: ``invoke(args, cwd) -> (exit status, output)`` runs ``sfmkit --no-progress *args``.
Invoke = Callable[[Sequence[str], Path], tuple[int, str]]

#: What the map stage logs when it reuses a finished model.
REUSED = "same inputs and options as the model already there"

#: The options of the finished output every ``rerun`` case starts from.
BASE_OPTIONS = ("--max-size", "256")


@dataclass(frozen=True)
class Base:
    """Inputs shared by the cases: rendered images and a finished ``reconstruct`` of them."""

    images: Path
    output: Path
    num_images: int


@dataclass(frozen=True)
class Case:
    """One corpus case.

    Attributes:
        name: short label for the table.
        group: ``options`` (fails before extraction), ``inputs`` (a fresh run on odd input)
            or ``rerun`` (a command on a copy of a finished output).
        build: makes the case's inputs under its work folder; returns the CLI arguments and
            the output folder whose files must survive a failure (None: nothing to keep).
        expect: expected exit status.
        needle: text the output must contain.
        check: further check on success (work folder, output text) -> problem or None.
    """

    name: str
    group: str
    build: Callable[[Path, Base], tuple[list[str], Path | None]]
    expect: int
    needle: str = ""
    check: Callable[[Path, str], str | None] | None = None


@dataclass
class Outcome:
    """The result of one case; ``problems`` is empty when it passed."""

    name: str
    group: str
    exit_code: int
    traceback: bool
    data_kept: bool | None
    seconds: float
    problems: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems


# ----------------------------------------------------------------------------- inputs


def render_images(folder: Path, n: int = 5, size: tuple[int, int] = (320, 240)) -> list[str]:
    """``n`` overlapping views of the ray-cast blocks scene (PNG) in ``folder``."""
    from sfmkit.synth.raycast import arc_cameras, blocks_scene, render

    folder.mkdir(parents=True, exist_ok=True)
    scene = blocks_scene(seed=0)
    names = []
    for i, camera in enumerate(arc_cameras(n, size=size, arc_deg=40.0, seed=0)):
        image, _ = render(scene, camera, 2)
        names.append(f"{i:04d}.png")
        Image.fromarray(image).save(folder / names[-1])
    return names


def make_base(work: Path, invoke: Invoke, *, reconstruct: bool = True) -> Base:
    """Render the images and reconstruct them once (the ``rerun`` cases copy the output;
    the ``options`` cases need no reconstruction)."""
    images = work / "base-images"
    names = render_images(images)
    output = work / "base-out"
    if not reconstruct:
        return Base(images, output, len(names))
    code, text = invoke(["reconstruct", str(images), "-o", str(output), *BASE_OPTIONS], work)
    if code != 0:
        raise RuntimeError(f"the base reconstruction failed ({code}):\n{text}")
    return Base(images, output, len(names))


def _copy_images(base: Base, folder: Path, rename: Callable[[str], str] = lambda n: n) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in sorted(base.images.glob("*.png")):
        target = folder / rename(path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        out.append(target)
    return out


def _copy_output(base: Base, work: Path, name: str = "out") -> Path:
    target = work / name
    shutil.copytree(base.output, target, symlinks=True)
    return target


def _reconstruct(images: Path, out: Path, *extra: str) -> list[str]:
    return ["reconstruct", str(images), "-o", str(out), *BASE_OPTIONS, *extra]


def _damage(path: Path, at: float) -> None:
    """Overwrite 4 KiB of random bytes at fraction ``at`` of ``path`` (not a truncation)."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data[: len(path.read_bytes())]))


def _output(out: Path, what: str) -> Path:
    """The file ``what`` (``features``, ``matches``, ``verified``, ``refined``) of a finished
    run in ``out``, as its ``report.json`` names it."""
    return out / Path(json.loads((out / "report.json").read_text())["reconstruct"]["outputs"][what]).name


# ----------------------------------------------------------------------------- checks


def _report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


def registers_all(out_name: str, n: int, *, computed: int | None = None) -> Callable[[Path, str], str | None]:
    """The run in ``work/out_name`` registered ``n`` images (and computed ``computed`` of them)."""

    def check(work: Path, text: str) -> str | None:
        section = _report(work / out_name).get("reconstruct", {})
        stats = section.get("reconstruction", {})
        if stats.get("registered") != n or stats.get("images") != n:
            return f"registered {stats.get('registered')} of {stats.get('images')} images, expected {n}"
        if computed is not None:
            counts = section.get("counts", {})
            done = {k: (counts.get(k) or {}).get("computed") for k in ("extract", "match", "verify")}
            if any(v != computed for v in done.values()):
                return f"recomputed: {done}"
        return None

    return check


def _skipped(n: int, base: Callable[[Path, str], str | None]) -> Callable[[Path, str], str | None]:
    def check(work: Path, text: str) -> str | None:
        skipped = _report(work / "out").get("reconstruct", {}).get("counts", {}).get("skipped_images", {})
        if len(skipped) != n:
            return f"{len(skipped)} images reported skipped, expected {n}"
        return base(work, text)

    return check


def _snapshot(folder: Path | None) -> dict[str, str]:
    if folder is None or not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(folder).as_posix()] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def _kept(before: dict[str, str], after: dict[str, str]) -> bool:
    """Every file of ``before`` is still there unchanged (or moved aside as ``*.corrupt-*``)."""
    for name, digest in before.items():
        if after.get(name) == digest:
            continue
        if not any(k.startswith(f"{name}.corrupt-") and v == digest for k, v in after.items()):
            return False
    return True


# ----------------------------------------------------------------------------- the cases


def _fresh(work: Path, base: Base) -> Path:
    return _copy_images(base, work / "images")[0].parent


def _option_case(name: str, needle: str, *extra: str, setup: Callable[[Path], None] | None = None) -> Case:
    def build(work: Path, base: Base) -> tuple[list[str], Path | None]:
        images = _fresh(work, base)
        if setup is not None:
            setup(work)
        return _reconstruct(images, work / "out", *extra), None

    return Case(name, "options", build, 2, needle)


def _write(rel: str, text: str) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        (work / rel).write_text(text)

    return setup


def _folder_case(name: str, needle: str, make: Callable[[Path, Base], Path], *extra: str) -> Case:
    def build(work: Path, base: Base) -> tuple[list[str], Path | None]:
        return _reconstruct(make(work, base), work / "out", *extra), None

    return Case(name, "options", build, 2, needle)


def _empty(work: Path, base: Base) -> Path:
    (work / "images").mkdir()
    return work / "images"


def _one_image(work: Path, base: Base) -> Path:
    (work / "images").mkdir()
    shutil.copyfile(sorted(base.images.glob("*.png"))[0], work / "images" / "a.png")
    return work / "images"


def _tab_name(work: Path, base: Base) -> Path:
    images = _fresh(work, base)
    (images / "0000.png").rename(images / "tab\there.png")
    return images


def _not_images(work: Path, base: Base) -> Path:
    (work / "images").mkdir()
    (work / "images" / "notes.txt").write_text("not an image")
    return work / "images"


def _odd_names(work: Path, base: Base) -> tuple[list[str], Path | None]:
    odd = iter([" leading.png", "trailing .png", "#hash.png", "with space.png", "ünï çødé.png"])
    images = _copy_images(base, work / "images", lambda n: next(odd))[0].parent
    return _reconstruct(images, work / "out"), None


def _odd_names_listed(work: Path, base: Base) -> tuple[list[str], Path | None]:
    args, _ = _odd_names(work, base)
    names = sorted(p.name for p in (work / "images").iterdir())
    (work / "list.txt").write_text("# the images\n" + "\n".join(names) + "\n")
    return [*args, "--image-list", str(work / "list.txt")], None


def _partly_unknown_pairs(work: Path, base: Base) -> tuple[list[str], Path | None]:
    images = _fresh(work, base)
    names = sorted(p.name for p in images.iterdir())
    lines = [f"{a} {b}" for i, a in enumerate(names) for b in names[i + 1 :]] + ["gone.png 0000.png"]
    (work / "pairs.txt").write_text("\n".join(lines) + "\n")
    return _reconstruct(images, work / "out", "--pairs", str(work / "pairs.txt")), None


def _odd_formats(work: Path, base: Base) -> tuple[list[str], Path | None]:
    images = work / "images"
    sources = sorted(base.images.glob("*.png"))
    images.mkdir()
    rgb = [Image.open(p).convert("RGB") for p in sources]
    rgb[0].convert("L").save(images / "gray.png")
    rgb[1].convert("CMYK").save(images / "cmyk.jpg", quality=95)
    wide = (np.asarray(rgb[2].convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(images / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb[3].transpose(Image.Transpose.ROTATE_90).save(images / "rotated.jpg", quality=95, exif=exif)
    elsewhere = work / "linked"
    elsewhere.mkdir()
    rgb[4].save(elsewhere / "in-link.png")
    os.symlink(elsewhere, images / "sub", target_is_directory=True)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 100)
    (images / "empty.png").write_bytes(b"")
    (images / "text.jpg").write_text("not a jpeg")
    return _reconstruct(images, work / "out"), None


def _huge(work: Path, base: Base) -> tuple[list[str], Path | None]:
    images = _fresh(work, base)
    Image.new("1", (20_100, 20_000)).save(images / "huge.png")  # 402 MP, a small file
    return _reconstruct(images, work / "out"), None


def _no_output_option(work: Path, base: Base) -> tuple[list[str], Path | None]:
    images = _copy_images(base, work / "project" / "images")[0].parent
    return ["reconstruct", str(images), *BASE_OPTIONS], None


def _rerun(*extra: str, prepare: Callable[[Path], None] | None = None) -> Callable:
    def build(work: Path, base: Base) -> tuple[list[str], Path | None]:
        out = _copy_output(base, work)
        if prepare is not None:
            prepare(out)
        return _reconstruct(base.images, out, *extra), out

    return build


def _moved(work: Path, base: Base) -> tuple[list[str], Path | None]:
    out = work / "moved" / "elsewhere"
    out.parent.mkdir()
    shutil.copytree(base.output, out)
    return _reconstruct(base.images, out), None


def _map_args(out: Path, images: Path, *extra: str) -> list[str]:
    verified = _output(out, "verified")
    pairs = out / "pairs-exhaustive.txt"
    return ["map", str(images), str(verified), "--pairs", str(pairs), "-o", str(out / "sfm"), *extra]


def _map_other_images(work: Path, base: Base) -> tuple[list[str], Path | None]:
    out = _copy_output(base, work)
    paths = _copy_images(base, work / "other")
    contents = [p.read_bytes() for p in paths]
    for path, data in zip(paths, contents[1:] + contents[:1], strict=True):  # same names, other pictures
        path.write_bytes(data)
    return _map_args(out, work / "other"), out


def _map_case(*extra: str, prepare: Callable[[Path], None] | None = None) -> Callable:
    def build(work: Path, base: Base) -> tuple[list[str], Path | None]:
        out = _copy_output(base, work)
        if prepare is not None:
            prepare(out)
        return _map_args(out, base.images, *extra), out

    return build


def _evaluate_no_truth(work: Path, base: Base) -> tuple[list[str], Path | None]:
    from sfmkit.io.strecha import StrechaCamera, write_camera

    scene = work / "scene"
    _copy_images(base, scene / "images")
    (scene / "gt_dense_cameras").mkdir()
    camera = StrechaCamera(K=np.diag([300.0, 300.0, 1.0]), R_c2w=np.eye(3), C=np.zeros(3), size=(320, 240))
    for i in range(base.num_images):  # named after JPEGs the folder does not hold
        write_camera(scene / "gt_dense_cameras" / f"{i:04d}.jpg.camera", camera)
    return ["evaluate", "strecha", str(scene), "-o", str(work / "eval")], None


def _k(text: str) -> Callable[[Path], None]:
    return _write("K.txt", text)


def cases(num_images: int = 5) -> list[Case]:
    """The whole corpus."""
    n = num_images
    damaged = [
        Case(
            f"{what} file damaged at {at:.0%}",
            "rerun",
            _rerun(prepare=lambda out, what=what, at=at: _damage(_output(out, what), at)),
            0,
            check=registers_all("out", n),
        )
        for what in ("features", "matches", "verified", "refined")
        for at in (0.1, 0.3, 0.5, 0.7, 0.9)
    ]
    truncate = _rerun(
        prepare=lambda out: os.truncate(
            _output(out, "verified"), _output(out, "verified").stat().st_size // 2
        )
    )
    bad_report = _rerun(prepare=lambda out: (out / "report.json").write_text("{not json"))
    return [
        _folder_case("empty folder", "no images found", _empty),
        _folder_case("missing folder", "does not exist", lambda w, b: w / "nowhere"),
        _folder_case("only non-image files", "no images found", _not_images),
        _folder_case("one image", "need at least 2 images", _one_image),
        _folder_case("tab in a file name", "has a tab", _tab_name),
        _option_case("--pairs retrieval:0", "at least 1", "--pairs", "retrieval:0"),
        _option_case("--pairs sequential:-1", "at least 1", "--pairs", "sequential:-1"),
        _option_case("--pairs sequential:x", "integer", "--pairs", "sequential:x"),
        _option_case("--pairs missing file", "nothere.txt", "--pairs", "nothere.txt"),
        _option_case(
            "--pairs file of other images",
            "no usable image pair",
            "--pairs",
            "p.txt",
            setup=_write("p.txt", "x.jpg y.jpg\n"),
        ),
        _option_case("--intrinsics missing", "K.txt does not exist", "--intrinsics", "K.txt"),
        _option_case(
            "--intrinsics 12 numbers", "got 12 numbers", "--intrinsics", "K.txt", setup=_k("1 " * 12)
        ),
        _option_case("--intrinsics not numbers", "numbers only", "--intrinsics", "K.txt", setup=_k("a b c")),
        _option_case(
            "--intrinsics not a K", "not a calibration", "--intrinsics", "K.txt", setup=_k("0 " * 9)
        ),
        _option_case("--weights unknown", "unknown --weights", "--weights", "nonsense"),
        _option_case("--weights missing .pt", "does not exist", "--weights", "missing.pt"),
        _option_case("--device bogus", "invalid --device", "--device", "bogus"),
        _option_case(
            "--image-list missing image",
            "not found",
            "--image-list",
            "l.txt",
            setup=_write("l.txt", "z.png\n"),
        ),
        _option_case(
            "-o under a file", "cannot create output folder", "-o", "blocker/out", setup=_write("blocker", "")
        ),
        Case("odd but valid names", "inputs", _odd_names, 0, check=registers_all("out", n)),
        Case("odd names in an --image-list", "inputs", _odd_names_listed, 0, check=registers_all("out", n)),
        Case(
            "--pairs file naming a missing image",
            "inputs",
            _partly_unknown_pairs,
            0,
            "name images without features",
            check=registers_all("out", n),
        ),
        Case(
            "gray, CMYK, 16-bit, EXIF-rotated, symlinked folder; 3 broken files",
            "inputs",
            _odd_formats,
            0,
            check=_skipped(3, registers_all("out", n)),
        ),
        Case("a 402 MP image among them", "inputs", _huge, 0, check=_skipped(1, registers_all("out", n))),
        Case("no -o", "inputs", _no_output_option, 0, check=registers_all("project/sfmkit", n)),
        Case("identical rerun", "rerun", _rerun(), 0, REUSED, check=registers_all("out", n, computed=0)),
        Case("rerun --max-size 320", "rerun", _rerun("--max-size", "320"), 2, "other options"),
        Case("rerun --camera-mode single", "rerun", _rerun("--camera-mode", "single"), 2, "camera.mode"),
        Case("rerun --pairs sequential:2", "rerun", _rerun("--pairs", "sequential:2"), 2, "pairs"),
        Case("rerun --best-pairs 2", "rerun", _rerun("--best-pairs", "2"), 2, "best_pairs"),
        Case("rerun with a bad --intrinsics", "rerun", _rerun("--intrinsics", "nope.txt"), 2, "nope.txt"),
        *damaged,
        Case("verified file truncated", "rerun", truncate, 0, check=registers_all("out", n)),
        Case(
            "report.json unreadable",
            "rerun",
            bad_report,
            0,
            REUSED,
            check=registers_all("out", n, computed=0),
        ),
        Case(
            "output folder moved",
            "rerun",
            _moved,
            0,
            REUSED,
            check=registers_all("moved/elsewhere", n, computed=0),
        ),
        Case("map: other images, same names", "rerun", _map_other_images, 2, "not the ones"),
        Case("map: other --camera-mode", "rerun", _map_case("--camera-mode", "single"), 2, "other options"),
        Case("map: bad --intrinsics", "rerun", _map_case("--intrinsics", "nope.txt"), 2, "nope.txt"),
        Case("evaluate strecha: no matching truth", "options", _evaluate_no_truth, 2, "ground-truth"),
    ]


def run_case(case: Case, work: Path, base: Base, invoke: Invoke) -> Outcome:
    """Build and run one case in the empty folder ``work`` and judge it."""
    work.mkdir(parents=True, exist_ok=True)
    args, keep = case.build(work, base)
    before = _snapshot(keep)
    start = time.perf_counter()
    code, text = invoke(args, work)
    seconds = time.perf_counter() - start
    after = _snapshot(keep)
    traceback = "Traceback" in text
    kept = None if keep is None or case.expect == 0 else _kept(before, after)
    lines = [line for line in text.splitlines() if "error" in line.lower()]
    outcome = Outcome(
        case.name, case.group, code, traceback, kept, seconds, message=(lines or [""])[-1][:160]
    )
    if code != case.expect:
        outcome.problems.append(f"exit {code}, expected {case.expect}")
    if traceback:
        outcome.problems.append("traceback")
    warned = sorted(set(re.findall(r"\b\w+Warning\b", text)))
    if warned:
        outcome.problems.append(f"raw Python warning(s): {', '.join(warned)}")
    repeated = [line for line in set(text.splitlines()) if "WARNING" in line and text.count(line) > 1]
    if repeated:
        outcome.problems.append(f"a warning repeated: {repeated[0].strip()[:80]}")
    if case.needle and case.needle not in text:
        outcome.problems.append(f"message lacks {case.needle!r}")
    if kept is False:
        outcome.problems.append("files of the output changed or lost")
    if case.group == "options" and any(work.rglob("features-*.h5")):
        outcome.problems.append("extraction ran before the check")
    if code == 0 and case.check is not None:
        problem = case.check(work, text)
        if problem:
            outcome.problems.append(problem)
    if not outcome.passed:
        outcome.message = text[-1500:]
    return outcome


def table(outcomes: Sequence[Outcome]) -> str:
    """A markdown table of the outcomes."""
    rows = [
        "| case | group | exit | traceback | data kept | seconds | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        kept = "-" if o.data_kept is None else ("yes" if o.data_kept else "NO")
        result = "ok" if o.passed else "FAIL: " + "; ".join(o.problems)
        rows.append(
            f"| {o.name} | {o.group} | {o.exit_code} | {'YES' if o.traceback else 'no'} | {kept} | "
            f"{o.seconds:.1f} | {result} |"
        )
    return "\n".join(rows)
