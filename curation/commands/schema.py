"""`curate schema`: the recipe's JSON Schema, for editors (``# yaml-language-server: $schema=...``)."""

from __future__ import annotations

import argparse
import json


def add_parser(subcommands) -> None:
    p = subcommands.add_parser("schema", help="print the recipe JSON Schema")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation.recipe.sections import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
