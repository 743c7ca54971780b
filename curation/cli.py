"""`curate`: the command line. It parses arguments and wires the stages together, nothing more.

    curate run recipes/quickstart.yaml            # sample -> score -> filter per class -> run folder
    curate validate recipes/quickstart.yaml       # file:line:col: path: message for every problem
    curate schema > recipe.schema.json            # JSON Schema of recipes, for editors
    curate score runs/quickstart --metric perplexity   # rescore from the journal, no generation
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from curation import __version__
from curation.types import CurateError


class CliError(CurateError):
    """A failure with a one-line reason for the user (exit status 1)."""


from curation.recipe.overrides import add_override_option  # noqa: E402 - light: yaml only


def _load(recipe: str, overrides: list[str] | None = None):
    from curation.recipe.load import load_recipe

    return load_recipe(recipe, overrides=overrides or ())


def _check_data(loaded) -> list:
    """Problems that need the data: the questions' source, or traces made elsewhere (source.traces)."""
    if loaded.recipe.source.traces is not None:
        from curation.trace_import import check

        return check(loaded)
    from curation.source import check_source

    return check_source(loaded)


def cmd_validate(args: argparse.Namespace) -> int:
    from curation.source import raise_if_problems

    loaded = _load(args.recipe, args.overrides)
    raise_if_problems(_check_data(loaded))
    print(f"{loaded.file}: ok ({loaded.recipe.name})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from curation.recipe.sections import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from curation import pipeline
    from curation.source import raise_if_problems

    from curation.recipe.env import endpoint_env_problems

    loaded = _load(args.recipe, args.overrides)
    raise_if_problems(_check_data(loaded))
    # In the order a user fixes things: the recipe and its data, the endpoint, then the Hub token.
    raise_if_problems(endpoint_env_problems(loaded.recipe))
    if loaded.recipe.source.traces is not None:
        if args.shard or args.ray is not None:
            raise CliError("imported traces (source.traces) are read, not generated: --shard and --ray do not apply")
        if getattr(args, "dry_run", False):
            from curation.trace_import import describe_plan

            print(describe_plan(loaded))
            return 0
    if getattr(args, "dry_run", False):
        from curation.plan import print_plan

        return print_plan(loaded, Path(args.output) if args.output else pipeline.default_run_dir(loaded), no_push=args.no_push)
    if loaded.recipe.hub is not None and not args.no_push:
        from curation.hub import HubError, require_token

        try:
            require_token()  # fail now, not after the generation
        except HubError as exc:
            raise CliError(f"{exc}; or run with --no-push to write the run folder only (push it later with curate push)") from None
    run_dir = Path(args.output) if args.output else pipeline.default_run_dir(loaded)
    if args.ray is None and (args.shards or args.gpus_per_shard is not None):
        raise CliError("--shards and --gpus-per-shard go with --ray (for one shard by hand: --shard I/N)")
    if args.shard and args.ray is not None:
        raise CliError("--shard runs one shard here; --ray runs all of them on Ray: use one or the other")
    if args.shard:  # one shard generates into its own journal; `curate merge` scores and selects
        return _run_shard(args, loaded, run_dir)
    if args.ray is not None:
        from curation.distributed import run_on_ray

        if args.overrides:  # the Ray tasks reload the recipe from its file
            raise CliError("--set does not reach the Ray shard tasks: write the overrides into a recipe that `extends:` this one")

        recipe_ref = str(Path(args.recipe).resolve()) if Path(args.recipe).exists() else args.recipe
        summary, ray_run = run_on_ray(
            loaded, recipe_ref, run_dir, address=args.ray or None, shards=args.shards, gpus_per_shard=args.gpus_per_shard, retries=args.shard_retries, show_progress=not args.quiet
        )
        print(f"ray: {ray_run.shards} shards, {ray_run.generated} traces generated, {ray_run.cached} from the journals in {ray_run.seconds:.1f}s; merge {ray_run.merge_seconds:.1f}s")
        result = pipeline.RunResult(run_dir, summary, None)
    else:
        result = pipeline.run(loaded, run_dir, show_progress=not args.quiet)
    _print_summary(result.summary, run_dir, result.generation)
    if loaded.recipe.hub is not None and not args.no_push:
        from curation.hub import push_run

        pushed = push_run(run_dir, loaded.recipe.hub.repo, private=loaded.recipe.hub.private, revision=loaded.recipe.hub.revision, create_pr=loaded.recipe.hub.create_pr)
        print(pushed.describe())
    if result.generation and result.generation.failed:
        print(f"warning: {result.generation.failed} traces failed; run the same command again to retry them", file=sys.stderr)
        return 3
    return 0


def _run_shard(args: argparse.Namespace, loaded, run_dir: Path) -> int:
    from curation.shards import Shard, run_shard

    shard = Shard.parse(args.shard)
    stats = run_shard(loaded, run_dir, shard, show_progress=not args.quiet)
    print(f"shard {shard.index}/{shard.count}: {stats.requested} traces, {stats.cached} from the journal, {stats.generated} generated"
          f"{f', {stats.failed} failed' if stats.failed else ''} in {stats.seconds:.1f}s -> {shard.journal_path(run_dir)}")
    if stats.failed:
        print(f"warning: {stats.failed} traces failed; run the same command again to retry them", file=sys.stderr)
        return 3
    sets = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
    print(f"when all {shard.count} shards are done: curate merge {args.recipe} -o {run_dir}{sets}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from curation import pipeline
    from curation.shards import merge_shards

    loaded = _load(args.recipe, args.overrides)
    run_dir = Path(args.output) if args.output else pipeline.default_run_dir(loaded)
    summary, report = merge_shards(loaded, run_dir, show_progress=not args.quiet)
    print(f"merged {report.shards} shards: {report.traces} traces copied into {run_dir / 'journal.sqlite'}")
    _print_summary(summary, run_dir, None)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from curation import pipeline

    run_dir = Path(args.run_dir)
    overrides: dict = {}
    if args.metric:
        overrides.setdefault("score", {})["metric"] = args.metric
    if args.similarity:
        overrides.setdefault("score", {})["similarity"] = args.similarity
    summary = pipeline.rescore(run_dir, overrides)
    _print_summary(summary, run_dir, None)
    return 0


def _print_summary(summary, run_dir: Path, generation) -> None:
    lines = [f"run folder: {run_dir}"]
    if generation is not None:
        lines.append(
            f"traces: {generation.requested} requested, {generation.cached} from the journal, {generation.generated} generated"
            f"{f', {generation.failed} failed' if generation.failed else ''} in {generation.seconds:.1f}s"
            f"{f' ({generation.retries} retries)' if generation.retries else ''}"
        )
        for reason, count in generation.failure_reasons.most_common(3):
            lines.append(f"  failed: {count} traces: {reason[:200]}")
    imported = summary.generation.get("imported")
    if imported:
        lines.append(f"imported: {imported['traces']} traces from {imported['rows']} rows, {imported['already_in_journal']} already in the journal, {imported['refused_rows']} rows refused"
                     + (" (" + ", ".join(f"{reason} {count}" for reason, count in imported["refused_by_reason"].items()) + "; rows listed in stats.json)" if imported["refused_rows"] else ""))
    lines.append(f"questions: {summary.questions}   traces: {summary.traces}   unparsed: {summary.unparsed_traces}   truncated: {summary.truncated_traces}")
    lines.append(f"selection by {summary.metric}: kept {summary.kept} of {summary.questions}")
    for label, before in summary.per_class_before.items():
        lines.append(f"  {label:<32} {summary.per_class_after.get(label, 0):>5} kept of {before}")
    if summary.drop_reasons:
        lines.append("dropped: " + ", ".join(f"{reason} {count}" for reason, count in summary.drop_reasons.items()))
    lines.append(f'load it: datasets.load_dataset("{run_dir}", split="filtered")')
    print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description="Turn a YAML recipe into an uncertainty-filtered reasoning dataset.")
    parser.add_argument("--version", action="version", version=f"curate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="sample, score, filter per class and write the dataset (resumes an existing run folder)")
    p.add_argument("recipe", help="recipe file, run folder, or hf://datasets/ORG/NAME[@REVISION][/recipe.yaml] (a published dataset's recipe)")
    p.add_argument("-o", "--output", help="run folder (default: the recipe's output_dir, else runs/<name>)")
    p.add_argument("--no-push", action="store_true", help="do not push even if the recipe has a hub: section")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the plan (questions, traces, tokens, endpoints) and stop: nothing is generated or written")
    add_override_option(p)
    p.add_argument("--shard", metavar="I/N", help="generate only shard I of N (0 <= I < N) into RUN_DIR/shards/I-of-N/; then `curate merge`")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run the shards as Ray tasks (ADDRESS: auto, ray://HOST:PORT; default: Ray's own), then merge")
    p.add_argument("--shards", type=int, metavar="N", help="with --ray: number of shards (default: endpoints, else GPUs, else CPUs)")
    p.add_argument("--gpus-per-shard", type=float, help="with --ray: GPUs per shard task (default: 1 for the local backend on a GPU cluster, else 0)")
    p.add_argument("--shard-retries", type=int, default=2, help="with --ray: times Ray retries a failed shard, resuming from its journal (default 2)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("merge", help="merge the shard journals of a --shard run, then score, select and write the run folder once")
    p.add_argument("recipe", help="the recipe the shards ran")
    p.add_argument("-o", "--output", help="run folder (default: the recipe's output_dir, else runs/<name>)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_override_option(p)  # the same --set as the shards ran with
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("validate", help="check a recipe; prints file:line:col: path: message per problem")
    p.add_argument("recipe")
    add_override_option(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the recipe JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("score", help="recompute scores and selection from the run's journal, without generating")
    p.add_argument("run_dir")
    p.add_argument("--metric", help="selection metric (default: the recipe's)")
    p.add_argument("--similarity", help="similarity for consistency metrics (default: the recipe's)")
    p.set_defaults(func=cmd_score)

    # Each stage module below registers its own subcommand (add_cli); keep their top-level imports light.
    # -- eval (curation.evaluation) --
    from curation.evaluation import add_cli as add_eval_cli

    add_eval_cli(sub)
    # -- push (curation.hub) --
    from curation.hub import add_cli as add_push_cli

    add_push_cli(sub)
    # -- train (curation.commands.train) --
    from curation.commands import train as train_command

    train_command.add_parser(sub)
    # -- view (curation.view) --
    from curation.view import add_cli as add_view_cli

    add_view_cli(sub)
    return parser


def quiet_library_bars_in_logs() -> None:
    """Outside a terminal, no per-file bars from datasets or huggingface_hub (they read these at import);
    curate's own bars print a plain line now and then instead (curation.progress)."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_library_bars_in_logs()  # before datasets / huggingface_hub are imported: they read it then
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
