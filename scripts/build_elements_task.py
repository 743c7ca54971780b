"""Build recipes/data/elements-categories.csv, the study's second task: which family of the periodic table is an element in?

    pip download --no-deps mendeleev==1.3.0 -d /tmp/mendeleev
    python scripts/build_elements_task.py /tmp/mendeleev/mendeleev-1.3.0-py3-none-any.whl

The facts are the element table of the `mendeleev` package (MIT licence, Łukasz Mentel, "mendeleev
– A Python package with properties of chemical elements, ions, isotopes and methods to manipulate
and visualize periodic table", https://github.com/lmmentel/mendeleev), read from the SQLite database
its wheel ships (`mendeleev/elements.db`, tables `elements` and `series`). Each of the 118 elements
has one `series`: Nonmetals, Noble gases, Alkali metals, Alkaline earth metals, Metalloids,
Halogens, Poor metals (post-transition metals), Transition metals, Lanthanides, Actinides. That
series is the label, exactly as the package gives it, including its choices where chemists differ
(it puts lawrencium with the transition metals and polonium with the metalloids).

Two questions per element: by its name ("Iron") and by its symbol ("the element with the symbol
Fe"). The split is by element, so an element's two questions fall on the same side and nothing
learned on the pool leaks into the test set; it is stratified by series and deterministic (the
elements of each series are ordered by a hash of their atomic number, and the first 40% go to
`test`). The classes are imbalanced: 40 of the 118 elements are transition metals, 6 are halogens.
"""

from __future__ import annotations

import csv
import hashlib
import sqlite3
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "recipes" / "data" / "elements-categories.csv"
TEST_SHARE = 0.4


def read_elements(wheel: str) -> list[dict]:
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "elements.db"
        database.write_bytes(archive.read("mendeleev/elements.db"))
        with sqlite3.connect(database) as connection:
            series = dict(connection.execute("select id, name from series"))
            rows = connection.execute("select atomic_number, name, symbol, series_id, block, group_id, period from elements order by atomic_number").fetchall()
    return [
        {"atomic_number": z, "name": name, "symbol": symbol, "category": series[series_id], "block": block, "group": group or "", "period": period}
        for z, name, symbol, series_id, block, group, period in rows
    ]


def main(wheel: str) -> int:
    elements = read_elements(wheel)
    test = set()
    for category in sorted({e["category"] for e in elements}):
        members = sorted((e for e in elements if e["category"] == category), key=lambda e: hashlib.sha256(str(e["atomic_number"]).encode()).hexdigest())
        test.update(e["atomic_number"] for e in members[: round(TEST_SHARE * len(members))])
    out = []
    for e in elements:
        split = "test" if e["atomic_number"] in test else "pool"
        for kind, subject in (("name", e["name"]), ("symbol", f"the element with the symbol {e['symbol']}")):
            out.append({
                "question_id": f"el-{e['atomic_number']:03d}-{kind}", "atomic_number": e["atomic_number"], "question_type": kind,
                "subject": subject, "name": e["name"], "symbol": e["symbol"], "block": e["block"], "category": e["category"], "split": split,
            })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    by: dict = {}
    for r in out:
        by[(r["split"], r["category"])] = by.get((r["split"], r["category"]), 0) + 1
    print(f"wrote {OUT.relative_to(REPO)}: {len(elements)} elements, {len(out)} questions; " + ", ".join(f"{s}/{c}={n}" for (s, c), n in sorted(by.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
