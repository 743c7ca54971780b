"""`curate merge RECIPE`: copy the shard journals of a ``--shard`` run into the run's journal, then score, select and write once."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands) -> None:
    from curation.recipe.overrides import add_override_option

    p = subcommands.add_parser("merge", help="merge the shard journals of a --shard run, then score, select and write the run folder once")
    p.add_argument("recipe", help="the recipe the shards ran")
    p.add_argument("-o", "--output", help="run folder (default: the recipe's output_dir, else runs/<name>)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_override_option(p)  # the same --set as the shards ran with
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation.commands.run import print_summary
    from curation.recipe.load import load_recipe
    from curation.run_folder import RunFolder, default_run_dir
    from curation.shards import merge_shards

    loaded = load_recipe(args.recipe, overrides=args.overrides or ())
    run_dir = Path(args.output) if args.output else default_run_dir(loaded)
    summary, report = merge_shards(loaded, run_dir, show_progress=not args.quiet)
    print(f"merged {report.shards} shards: {report.traces} traces copied into {RunFolder(run_dir).journal}")
    print_summary(summary, run_dir, None)
    return 0
