"""`curate score RUN_DIR`: recompute scores and selection from the run's journal, without generating."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands) -> None:
    p = subcommands.add_parser("score", help="recompute scores and selection from the run's journal, without generating")
    p.add_argument("run_dir")
    p.add_argument("--metric", help="selection metric (default: the recipe's)")
    p.add_argument("--similarity", help="similarity for consistency metrics (default: the recipe's)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation import pipeline
    from curation.commands.run import print_summary

    score: dict = {}
    if args.metric:
        score["metric"] = args.metric
    if args.similarity:
        score["similarity"] = args.similarity
    run_dir = Path(args.run_dir)
    print_summary(pipeline.rescore(run_dir, {"score": score} if score else {}), run_dir, None)
    return 0
