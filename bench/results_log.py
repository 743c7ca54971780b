"""The benches' shared record: one JSON line per run appended to bench/out/results.jsonl (git ignores bench/out/)."""

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "out" / "results.jsonl"


def append(record: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
