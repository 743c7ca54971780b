"""The test suite's slowest tests and its wall time, before and after a change (issue 33, item 4).

Reads pytest's JUnit XML reports (``pytest --junitxml=FILE``), which hold every test's duration
(setup, call and teardown together, as ``--durations`` counts them) and the run's wall time:

    .venv/bin/python -m pytest -m slow --junitxml=/tmp/before.xml          # on the old code
    .venv/bin/python -m pytest -m slow -n 2 --dist loadgroup --junitxml=/tmp/after.xml
    .venv/bin/python bench/test_durations.py /tmp/before.xml /tmp/after.xml --top 30

Prints, per report, the wall time, the summed test time (the CPU-bound work a serial run waits for),
the outcome counts and the ``--top`` slowest tests as a markdown table (bench/README.md keeps them).
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path


def read_report(path: Path) -> tuple[dict, list[tuple[str, float, str]]]:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests = []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
        module = case.get("classname", "").replace(".", "/")
        tests.append((f"{module}.py::{case.get('name')}", float(case.get("time", 0.0)), outcome))
    summary = {"wall_s": float(suite.get("time", 0.0)), "tests": len(tests), "summed_s": sum(t for _, t, _ in tests), "outcomes": Counter(o for *_, o in tests)}
    return summary, tests


def markdown(path: Path, top: int) -> str:
    summary, tests = read_report(path)
    outcomes = ", ".join(f"{count} {name}" for name, count in sorted(summary["outcomes"].items()))
    lines = [
        f"**{path.name}**: wall {summary['wall_s'] / 60:.1f} min, {summary['tests']} tests ({outcomes}), summed test time {summary['summed_s'] / 60:.1f} min",
        "",
        "| # | test | s | outcome |",
        "|---:|---|---:|---|",
    ]
    for rank, (name, seconds, outcome) in enumerate(sorted(tests, key=lambda t: -t[1])[:top], start=1):
        lines.append(f"| {rank} | `{name}` | {seconds:.1f} | {outcome} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print("\n\n".join(markdown(path, args.top) for path in args.reports))


if __name__ == "__main__":
    main()
