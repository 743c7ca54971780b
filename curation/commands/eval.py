"""`curate eval`: placeholder until the evaluation package lands (issue 25 merge)."""


def add_parser(subcommands) -> None:
    from curation.evaluation import add_cli

    add_cli(subcommands)
