"""The full fault suite (issue 12): every scenario, every stack, 300 runs each.

    python bench/faults.py                 # everything, 300 runs per scenario
    python bench/faults.py --runs 100      # fewer runs
    python bench/faults.py -k embedded     # a pytest -k selection
    python bench/faults.py --results r.jsonl        # keep each scenario's line there
    python bench/faults.py --table r.jsonl          # the table of such a file, no run

It runs ``pytest tests/faults`` with ``CF_FAULTS_FULL=1`` (the long scenarios, which
the normal test run deselects) and prints one table: per scenario and stack, the runs
completed / failed / lost, the finished steps that ran again, the step bodies that ran
twice (an interrupted step may: steps are at-least-once), and the times from the fault
to the first move of the runs it interrupted (resume) and to the end of the last run
(recover). Every server is private to the suite (tests/faults/instances.py); the
machine's own services are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

NEVER = 10**6  # tests/faults/harness.py's resume time of a run that never moved
ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    ("scenario", "scenario"),
    ("stack", "stack"),
    ("runs", "runs"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("lost", "lost"),
    ("finished_rerun", "finished steps re-run"),
    ("extra_bodies", "bodies run twice"),
    ("resume_s", "resume s"),
    ("recover_s", "recover s"),
]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int) and value >= NEVER:
        return "never"  # an interrupted run that did not move again
    return str(value)


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [_cell(row.get(key)) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per scenario (300)")
    parser.add_argument("-k", default=None, help="a pytest -k expression")
    parser.add_argument("--results", default=None, help="append each scenario's JSON here")
    parser.add_argument("--table", default=None, help="print the table of a results file")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines()]
        print(table(rows))
        return 0
    with tempfile.TemporaryDirectory(prefix="cf-faults-") as tmp:
        results = Path(args.results).resolve() if args.results else Path(tmp) / "results.jsonl"
        env = {
            **os.environ,
            "CF_FAULTS_FULL": "1",
            "CF_FAULTS_RUNS": str(args.runs),
            "CF_FAULTS_RESULTS": str(results),
        }
        command = [
            sys.executable, "-m", "pytest", "tests/faults", "-q", "-rxXs",
            "-p", "no:cacheprovider", "--timeout", "3600",
        ]  # fmt: skip
        if args.k:
            command += ["-k", args.k]
        code = subprocess.call(command, cwd=ROOT, env=env)
        rows = (
            [json.loads(line) for line in results.read_text().splitlines()]
            if (results.exists())
            else []
        )
    print(f"\nfault suite, {args.runs} runs per scenario (pytest exit code {code})\n")
    print(table(rows))
    for row in rows:
        for note in row.get("notes") or []:
            print(f"  {row['scenario']} ({row['stack']}): {note.splitlines()[0]}")
    return code


if __name__ == "__main__":
    sys.exit(main())
