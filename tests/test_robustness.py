"""The bad-input corpus (:mod:`sfmkit.eval.robustness`), run in-process.

Bad options and folders (checked before any stage runs), odd inputs and reruns on copies of
one finished output (5 rendered 320x240 images: about 20 s in all). ``benchmarks/robustness.py``
runs the same corpus through the real command line and prints the table.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sfmkit.cli.main import app
from sfmkit.eval.robustness import Base, Case, cases, make_base, run_case, table

CASES = cases()


def invoke(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    runner = CliRunner(env={"COLUMNS": "240"})
    with contextlib.chdir(cwd):
        result = runner.invoke(app, ["--no-progress", *args])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\nTraceback: {result.exception!r}"
    return result.exit_code, text


@pytest.fixture(scope="module")
def images_only(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return make_base(tmp_path_factory.mktemp("corpus"), invoke, reconstruct=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return make_base(tmp_path_factory.mktemp("corpus-run"), invoke)


def _check(case: Case, work: Path, base: Base) -> None:
    outcome = run_case(case, work, base, invoke)
    assert outcome.passed, f"{table([outcome])}\n{outcome.message}"


@pytest.mark.parametrize("case", [c for c in CASES if c.group == "options"], ids=lambda c: c.name)
def test_bad_options_fail_before_any_work(case: Case, images_only: Base, tmp_path: Path) -> None:
    _check(case, tmp_path, images_only)


@pytest.mark.parametrize("case", [c for c in CASES if c.group != "options"], ids=lambda c: c.name)
def test_odd_inputs_and_reruns(case: Case, finished: Base, tmp_path: Path) -> None:
    _check(case, tmp_path, finished)


def test_the_judge_can_fail(images_only: Base, tmp_path: Path) -> None:
    """A case whose command does not fail as expected is reported, not passed."""

    def build(work: Path, base: Base) -> tuple[list[str], Path | None]:
        (work / "f").mkdir()
        return ["--help"], work / "f"

    outcome = run_case(
        Case("help exits 0", "options", build, 2, "never printed"), tmp_path, images_only, invoke
    )
    assert not outcome.passed and len(outcome.problems) == 2
    assert os.path.isdir(tmp_path / "f")


def test_map_gives_the_same_model_on_the_same_inputs(finished: Base, tmp_path: Path) -> None:
    """Three maps of the same verified matches into fresh folders: identical models (the
    mapper runs on one thread by default; see MapConf.num_threads)."""
    import json

    import numpy as np
    import pycolmap

    report = json.loads((finished.output / "report.json").read_text())["reconstruct"]
    args = [str(finished.images), report["outputs"]["verified"], "--pairs", report["inputs"]["pairs"]]
    args += ["--features", report["outputs"]["refined"]]
    models = []
    for i in range(3):
        code, text = invoke(["map", *args, "-o", str(tmp_path / f"m{i}")], tmp_path)
        assert code == 0, text
        rec = pycolmap.Reconstruction(tmp_path / f"m{i}")
        points = np.array(sorted(tuple(p.xyz) for p in rec.points3D.values()))
        centres = np.array([rec.images[k].projection_center() for k in sorted(rec.images)])
        models.append((points, centres))
    for points, centres in models[1:]:
        assert points.shape == models[0][0].shape and np.array_equal(points, models[0][0])
        assert np.array_equal(centres, models[0][1])
