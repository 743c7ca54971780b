"""The subcommands of `curate`, one module each.

Every module here defines two things and nothing heavier at import time (argparse, pathlib and
curation.types only; a command imports its stages inside ``main``, so ``curate view`` never loads
torch and ``curate run`` never loads matplotlib):

    add_parser(subcommands)  registers the subcommand, its arguments, and ``set_defaults(func=main)``
    main(args) -> int        runs it; raises CurateError (or a subclass) for a user's mistake

``curation.cli`` lists the modules in ``COMMANDS`` and only dispatches.
"""
