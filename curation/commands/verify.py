"""`curate verify RUN_DIR | hf://[datasets/]ORG/NAME[@REVISION]`: recompute a published dataset's splits from its traces and recipe.

    curate verify runs/quickstart                     # a run folder
    curate verify hf://datasets/my-lab/perturbqa-cocoa@main

Exit 0 when every row of `scored` and `filtered` follows from the published traces and recipe.yaml,
1 when some differ (each named, with the published and the recomputed value), 2 when it cannot be
verified (the reason is printed: no traces config, a scorer or critic, a similarity model not here).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subcommands) -> None:
    p = subcommands.add_parser("verify", help="recompute a published dataset's scored and filtered splits from its traces and recipe, and compare")
    p.add_argument("location", metavar="RUN_DIR|hf://datasets/ORG/NAME[@REVISION]")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation.verify import CannotVerify, verify

    try:
        result = verify(args.location)
    except CannotVerify as exc:
        print(f"cannot verify {args.location}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(result.report()), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1
