"""`curate`: the command line. It finds the subcommand and runs it, nothing more.

    curate run recipes/quickstart.yaml            # sample -> score -> filter per class -> run folder
    curate validate recipes/quickstart.yaml       # file:line:col: path: message for every problem
    curate schema > recipe.schema.json            # JSON Schema of recipes, for editors
    curate score runs/quickstart --metric perplexity   # rescore from the journal, no generation

Each subcommand is a module of ``curation.commands`` with its parser and its ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from curation import __version__
from curation.types import CurateError

# in the order `curate --help` lists them
COMMANDS = ("run", "merge", "validate", "schema", "score", "eval", "push", "verify", "train", "view")


def program_name() -> str:
    """`hf curate` when run as the Hub CLI's extension (the `hf-curate` script), else `curate`: what --help should show."""
    return "hf curate" if os.path.basename(sys.argv[0] or "") == "hf-curate" else "curate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(), description="Turn a YAML recipe into an uncertainty-filtered reasoning dataset.")
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"curation.commands.{name}").add_parser(subcommands)
    return parser


def quiet_library_bars_in_logs() -> None:
    """Outside a terminal, no per-file bars from datasets or huggingface_hub (they read these at import);
    curate's own bars print a plain line now and then instead (curation.progress). Called before anything imports tqdm."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # the rest (transformers' GGUF conversion draws a bare tqdm no switch reaches) read TQDM_* when tqdm is
        # imported; curate's own log lines (curation.progress) pass disable=False
        os.environ.setdefault("TQDM_DISABLE", "1")


def show_recipe_format_warnings() -> None:
    """A migrated recipe's deprecations as `warning: file:line:col: ...` lines, like validate's errors, not Python's warning format."""
    from curation.recipe.versions import RecipeFormatWarning

    show = warnings.showwarning
    shown: set[str] = set()  # once each: a command reads its run folder's recipe several times, and libraries that
    # change the warning filters on import reset Python's own once-per-location registry

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RecipeFormatWarning):
            if str(message) not in shown:
                shown.add(str(message))
                print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = show_warning


def main(argv: list[str] | None = None) -> int:
    quiet_library_bars_in_logs()  # before tqdm, datasets and huggingface_hub are imported: they read it then
    show_recipe_format_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from curation.types import RecipeError

    try:
        return args.func(args)
    except RecipeError as exc:  # file:line:col lines, as `curate validate` prints them
        print(str(exc), file=sys.stderr)
        return 2
    except CurateError as exc:  # every user error (HubError, TrainError, EvalError, CliError, ...): its message only
        message = str(exc).strip()
        print(f"error: {message or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished traces are in the journal; run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract is a one-line reason, not a traceback
        if args.debug or os.environ.get("CURATE_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        # Our own errors are sentences for the user; anything else names its type, since it is likely a bug.
        expected = isinstance(exc, (ValueError, FileNotFoundError, RuntimeError, PermissionError)) and message
        print(f"error: {message}" if expected else f"error: {type(exc).__name__}{': ' + message if message else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
