"""Run the bad-input corpus (:mod:`sfmkit.eval.robustness`) through the real command line and
print a table: case, exit status, traceback, data kept, seconds, result; JSON to results.json.

    python benchmarks/robustness.py -o bench_out/robustness [--cases "rerun" "one image" ...]

Each case runs ``python -m sfmkit --no-progress ...`` in a subprocess in its own folder, on
small rendered images and copies of one finished reconstruction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sfmkit.eval.robustness import (
    BASE_OPTIONS,
    Base,
    Outcome,
    cases,
    make_base,
    registers_all,
    run_case,
    table,
)

#: Seconds after the start at which ``reconstruct`` is killed (start-up takes about 3 s; the
#: stages of the 5 small images take 2-3 s more), and the signals sent.
DELAYS = tuple(3.0 + 0.25 * i for i in range(13))
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}


def invoke(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "sfmkit", "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", **os.environ},
    )
    return done.returncode, done.stdout + done.stderr


def _stage_reached(out: Path) -> str:
    """The last stage whose file exists in ``out`` (a rough label for the table)."""
    for name, pattern in (
        ("done", "sfm-ba/ba-run.json"),
        ("bundle", "sfm/map-run.json"),
        ("map", "sfm/database.db"),
        ("refine", "*featuremetric.h5"),
        ("verify", "verified-*.h5"),
        ("match", "matches-*.h5"),
        ("extract", "features-*.h5"),
    ):
        if any(out.glob(pattern)):
            return name
    return "start-up"


def interrupt_case(work: Path, base: Base, delay: float, sig: str) -> Outcome:
    """Kill ``reconstruct`` ``delay`` seconds after it starts, then run it again: the rerun
    must finish, without a traceback, with every image registered."""
    from sfmkit.eval.robustness import _copy_images

    work.mkdir(parents=True)
    images = _copy_images(base, work / "images")[0].parent
    args = ["reconstruct", str(images), "-o", str(work / "out"), *BASE_OPTIONS]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfmkit", "--no-progress", *args],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(SIGNALS[sig])
    first = proc.communicate()[0]
    reached = _stage_reached(work / "out") if killed else "finished"
    start = time.perf_counter()
    code, text = invoke(args, work)
    name = f"{sig} at {delay:g} s (in {reached}), then rerun"
    outcome = Outcome(name, "interrupt", code, "Traceback" in text + first, None, time.perf_counter() - start)
    # 130 from sfmkit's handler; -15 only once the work is done (the interpreter shutting down)
    allowed = (130, 0, -signal.SIGTERM) if reached == "done" else (130, 0)
    if sig == "SIGTERM" and killed and proc.returncode not in allowed:
        outcome.problems.append(f"SIGTERM exit {proc.returncode}, expected 130")
    if "Traceback" in first or "Traceback" in text:
        outcome.problems.append("traceback")
    if code != 0:
        outcome.problems.append(f"rerun exit {code}")
    else:
        problem = registers_all("out", base.num_images)(work, text)
        if problem:
            outcome.problems.append(problem)
    if not outcome.passed:
        outcome.message = (first + text)[-1500:]
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="Work folder (emptied first).")
    parser.add_argument("--cases", nargs="*", help="Only cases whose name or group contains one of these.")
    parser.add_argument(
        "--delays",
        type=float,
        nargs="*",
        default=list(DELAYS),
        help="Kill times of the interrupt cases (none: skip).",
    )
    args = parser.parse_args()
    work = args.output
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    corpus = cases()
    if args.cases:
        corpus = [c for c in corpus if any(k in c.name or k == c.group for k in args.cases)]
    interrupts = not args.cases or "interrupt" in args.cases
    base = make_base(work, invoke, reconstruct=interrupts or any(c.group != "options" for c in corpus))
    outcomes = []
    for i, case in enumerate(corpus):
        outcome = run_case(case, work / f"case{i:02d}", base, invoke)
        print(
            f"{'ok  ' if outcome.passed else 'FAIL'} {outcome.seconds:6.1f} s  {case.name}", file=sys.stderr
        )
        outcomes.append(outcome)
    if interrupts:
        for sig in SIGNALS:
            for j, delay in enumerate(args.delays):
                outcome = interrupt_case(work / f"kill-{sig}-{j}", base, delay, sig)
                print(
                    f"{'ok  ' if outcome.passed else 'FAIL'} {outcome.seconds:6.1f} s  {outcome.name}",
                    file=sys.stderr,
                )
                outcomes.append(outcome)
    (work / "results.json").write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2) + "\n")
    print(json.dumps({"cases": len(outcomes), "failed": sum(not o.passed for o in outcomes)}))
    print(table(outcomes))
    for o in outcomes:
        if not o.passed:
            print(f"\n### {o.name}\n{o.message}")


if __name__ == "__main__":
    main()
