"""Build recipes/data/m49-continents.csv, the study's task: which UN M49 region is a country in?

    pip download --no-deps country_converter==1.3.2 -d /tmp/coco
    python scripts/build_m49_task.py /tmp/coco/country_converter-1.3.2-py3-none-any.whl

The facts are the UN Statistics Division's "Standard country or area codes for statistical use"
(M49): each country or area, its M49 code and its sub-region. They are read from the copy of the
M49 table that the country_converter package (GPL-3.0) ships, and only the facts are kept: names,
the M49 code and sub-region. The region (Africa, Americas, Asia, Europe, Oceania) follows from the
sub-region by M49's own hierarchy (SUBREGION_TO_REGION below), and is cross-checked against the
package's independent `continent` column; the rows where they disagree are printed (M49 puts
Christmas Island and the Cocos (Keeling) Islands in "Australia and New Zealand", the package's
continent says Asia: M49 wins, it is the cited source).

Two questions per country: its short name, and its official name where that differs (e.g.
"Hashemite Kingdom of Jordan"). The split is by country, so a country's two questions fall on
the same side and nothing learned on the pool leaks into the test set; it is stratified by
region and deterministic (the countries of each region are ordered by a hash of their M49 code,
and the first 40% go to `test`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "recipes" / "data" / "m49-continents.csv"
TEST_SHARE = 0.4

# M49's hierarchy: sub-region (or intermediate region) -> region.
SUBREGION_TO_REGION = {
    "Northern Africa": "Africa", "Eastern Africa": "Africa", "Middle Africa": "Africa", "Southern Africa": "Africa", "Western Africa": "Africa",
    "Caribbean": "Americas", "Central America": "Americas", "South America": "Americas", "Northern America": "Americas",
    "Central Asia": "Asia", "Eastern Asia": "Asia", "South-eastern Asia": "Asia", "Southern Asia": "Asia", "Western Asia": "Asia",
    "Eastern Europe": "Europe", "Northern Europe": "Europe", "Southern Europe": "Europe", "Western Europe": "Europe",
    "Australia and New Zealand": "Oceania", "Melanesia": "Oceania", "Micronesia": "Oceania", "Polynesia": "Oceania",
}
PACKAGE_CONTINENT = {"Africa": "Africa", "America": "Americas", "Asia": "Asia", "Europe": "Europe", "Oceania": "Oceania"}


def main(wheel: str) -> int:
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("country_converter/country_data.tsv").decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    countries = []
    for row in rows:
        if row["obsolete"].strip() or row["UNregion"] not in SUBREGION_TO_REGION or not row["UNcode"].strip():
            continue  # former countries, Antarctica and rows without an M49 code
        region = SUBREGION_TO_REGION[row["UNregion"]]
        if PACKAGE_CONTINENT.get(row["continent"]) != region:
            print(f"cross-check: {row['name_short']}: M49 {row['UNregion']} -> {region}; package continent {row['continent']}", file=sys.stderr)
        countries.append({"m49": int(float(row["UNcode"])), "name": row["name_short"].strip(), "official_name": row["name_official"].strip(), "subregion": row["UNregion"], "region": region})

    test = set()
    for region in sorted({c["region"] for c in countries}):
        members = sorted((c for c in countries if c["region"] == region), key=lambda c: hashlib.sha256(str(c["m49"]).encode()).hexdigest())
        test.update(c["m49"] for c in members[: round(TEST_SHARE * len(members))])

    out = []
    for c in sorted(countries, key=lambda c: c["m49"]):
        split = "test" if c["m49"] in test else "pool"
        kinds = [("name", c["name"])] + ([("official_name", c["official_name"])] if c["official_name"].casefold() != c["name"].casefold() else [])
        for kind, text_name in kinds:
            out.append({"question_id": f"m49-{c['m49']:03d}-{kind}", "m49": f"{c['m49']:03d}", "question_type": kind, "country": text_name, "subregion": c["subregion"], "region": c["region"], "split": split})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(out[0]))
        writer.writeheader()
        writer.writerows(out)
    by = {}
    for r in out:
        by.setdefault((r["split"], r["region"]), 0)
        by[(r["split"], r["region"])] += 1
    print(f"wrote {OUT.relative_to(REPO)}: {len(countries)} countries, {len(out)} questions; " + ", ".join(f"{s}/{g}={n}" for (s, g), n in sorted(by.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
