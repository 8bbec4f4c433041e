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
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from sfmkit.eval.robustness import cases, make_base, run_case, table


def invoke(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "sfmkit", "--no-progress", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", **__import__("os").environ},
    )
    return done.returncode, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="Work folder (emptied first).")
    parser.add_argument("--cases", nargs="*", help="Only cases whose name or group contains one of these.")
    args = parser.parse_args()
    work = args.output
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    corpus = cases()
    if args.cases:
        corpus = [c for c in corpus if any(k in c.name or k == c.group for k in args.cases)]
    base = make_base(work, invoke, reconstruct=any(c.group != "options" for c in corpus))
    outcomes = []
    for i, case in enumerate(corpus):
        outcome = run_case(case, work / f"case{i:02d}", base, invoke)
        print(
            f"{'ok  ' if outcome.passed else 'FAIL'} {outcome.seconds:6.1f} s  {case.name}", file=sys.stderr
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
