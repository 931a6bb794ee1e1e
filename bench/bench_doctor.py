"""The doctor's confusion table: which checks fire on which case of the clinic (deepscope.demos.clinic).

Run: python bench/bench_doctor.py [--out DIR]

Every case is a small training on built-in data, healthy or broken in one known way; each is
recorded, then diagnosed. Rows are cases (with the check expected to find them), columns the checks
that fired: E = error, W = warning, i = info. A case passes when its expected check fires as a
warning or an error — and, for a healthy case, when nothing but infos fires. Prints the time each
case took to record and to diagnose.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from deepscope.demos.clinic import CASES, record_case
from deepscope.diagnostics import CHECKS, doctor

MARKS = {"error": "E", "warning": "W", "info": "i"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        results = []
        for case in CASES:
            start = time.perf_counter()
            run, datasets = record_case(case.name, out)
            recorded = time.perf_counter() - start
            start = time.perf_counter()
            findings = doctor(run, datasets=datasets or None)
            results.append((case, findings, recorded, time.perf_counter() - start))
    fired_anywhere = [c for c in CHECKS.names() if any(f.check == c for _, fs, _, _ in results for f in fs)]
    width = max(len(c.name) for c in CASES)
    print(f"{'case':<{width}}  {'expected':<20} " + " ".join(f"{c[:6]:>6}" for c in fired_anywhere) + "  result   time")
    passed = 0
    for case, findings, recorded, diagnosed in results:
        marks = {f.check: MARKS[f.severity] for f in reversed(findings)}  # the most severe mark of each check
        serious = {f.check for f in findings if f.severity != "info"}
        ok = not serious if case.expected is None else case.expected in serious
        passed += ok
        cells = " ".join(f"{marks.get(c, '.'):>6}" for c in fired_anywhere)
        print(
            f"{case.name:<{width}}  {case.expected or '(healthy)':<20} {cells}  {'pass' if ok else 'FAIL':<6} "
            f"{recorded:5.1f} s + {diagnosed * 1e3:4.0f} ms"
        )
    print(f"{passed}/{len(results)} cases pass; columns: {', '.join(fired_anywhere)}")


if __name__ == "__main__":
    main()
