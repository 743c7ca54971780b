"""`curate train`: placeholder until the training package lands (issue 25 merge)."""


def add_parser(subcommands) -> None:
    from curation.train import add_cli

    add_cli(subcommands)
