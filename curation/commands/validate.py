"""`curate validate RECIPE`: every problem of a recipe and its data as ``file:line:col: path: message``."""

from __future__ import annotations

import argparse


def add_parser(subcommands) -> None:
    from curation.recipe.overrides import add_override_option

    p = subcommands.add_parser("validate", help="check a recipe; prints file:line:col: path: message per problem")
    p.add_argument("recipe")
    add_override_option(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    loaded = load_checked(args.recipe, args.overrides)
    print(f"{loaded.file}: ok ({loaded.recipe.name})")
    return 0


def load_checked(recipe: str, overrides: list[str] | None = None):
    """The recipe, loaded and checked with its data: the questions' source, or traces made elsewhere (source.traces)."""
    from curation.recipe.load import load_recipe
    from curation.source import check_source, raise_if_problems

    loaded = load_recipe(recipe, overrides=overrides or ())
    if loaded.recipe.source.traces is not None:
        from curation.trace_import import check

        raise_if_problems(check(loaded))
    else:
        raise_if_problems(check_source(loaded))
    return loaded


def check_ready(recipe: str, overrides: list[str] | None = None):
    """As ``load_checked``, and the endpoints' environment too: in the order a user fixes things
    (the recipe and its data, the endpoint, then the Hub token, which ``curate run`` checks)."""
    from curation.recipe.env import endpoint_env_problems
    from curation.source import raise_if_problems

    loaded = load_checked(recipe, overrides)
    raise_if_problems(endpoint_env_problems(loaded.recipe))
    return loaded
