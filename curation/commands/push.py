"""`curate push RUN_DIR`: publish a run folder to the Hub in one commit (data, card, recipe, plots; never the journal)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands) -> None:
    p = subcommands.add_parser("push", help="publish a run folder to the Hub in one commit: data, card, recipe, plots (never the journal)")
    p.add_argument("run_dir")
    p.add_argument("--repo", help="dataset repo id ORG/NAME (default: the recipe's hub.repo)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--revision", help="branch to push to, created from main if missing (default: main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--no-source", action="store_true", help="do not upload a local source file (the recipe then cannot be rerun as is)")
    p.add_argument("--no-report", action="store_true", help="do not upload report.html (curate view), nor generate it")
    p.add_argument("-m", "--message", help="commit message")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation.hub import HubError, push_run
    from curation.run_folder import RunFolder

    run_dir = Path(args.run_dir)
    folder = RunFolder(run_dir)
    hub = folder.recipe().hub if folder.recipe_file.exists() else None
    repo = args.repo or (hub.repo if hub else None)
    if not repo:
        raise HubError("give --repo ORG/NAME (the recipe has no hub.repo)")
    result = push_run(
        run_dir,
        repo,
        private=args.private or bool(hub and hub.private),
        revision=args.revision or (hub.revision if hub else None),
        create_pr=args.create_pr or bool(hub and hub.create_pr),
        include_source=False if args.no_source else None,
        commit_message=args.message,
        include_report=not args.no_report,
    )
    print(result.describe())  # warnings went to stderr through logging as they arose
    return 0
