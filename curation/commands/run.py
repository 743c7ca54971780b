"""`curate run RECIPE`: sample, score, filter per class and write the run folder (then push, with a hub: section).

Also the two ways to spread generation: ``--shard I/N`` (one shard here, then ``curate merge``) and
``--ray`` (every shard as a Ray task, merged here). ``--dry-run`` prints the plan and writes nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from curation.types import CliError


def add_parser(subcommands) -> None:
    from curation.recipe.overrides import add_override_option

    p = subcommands.add_parser("run", help="sample, score, filter per class and write the dataset (resumes an existing run folder)")
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
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation.commands.validate import check_ready
    from curation.run_folder import default_run_dir
    from curation.tables import lean_pyarrow

    lean_pyarrow()
    loaded = check_ready(args.recipe, args.overrides)
    refuse_conflicting_options(args, imported=loaded.recipe.source.traces is not None)
    run_dir = Path(args.output) if args.output else default_run_dir(loaded)
    if args.dry_run:
        return print_dry_run(loaded, run_dir, no_push=args.no_push)
    pushing = loaded.recipe.hub is not None and not args.no_push
    if pushing:
        require_hub_token()  # fail now, not after the generation
    if args.shard:  # one shard generates into its own journal; `curate merge` scores and selects
        return run_one_shard(args, loaded, run_dir)
    summary, generation = run_on_ray(args, loaded, run_dir) if args.ray is not None else run_here(loaded, run_dir, quiet=args.quiet)
    print_summary(summary, run_dir, generation)
    if pushing:
        from curation.hub import push_run

        hub = loaded.recipe.hub
        print(push_run(run_dir, hub.repo, private=hub.private, revision=hub.revision, create_pr=hub.create_pr).describe())
    if generation and generation.failed:
        print(f"warning: {generation.failed} traces failed; run the same command again to retry them", file=sys.stderr)
        return 3
    return 0


def refuse_conflicting_options(args: argparse.Namespace, *, imported: bool) -> None:
    if imported and (args.shard or args.ray is not None):
        raise CliError("imported traces (source.traces) are read, not generated: --shard and --ray do not apply")
    if args.ray is None and (args.shards or args.gpus_per_shard is not None):
        raise CliError("--shards and --gpus-per-shard go with --ray (for one shard by hand: --shard I/N)")
    if args.shard and args.ray is not None:
        raise CliError("--shard runs one shard here; --ray runs all of them on Ray: use one or the other")
    if args.ray is not None and args.overrides:  # the Ray tasks reload the recipe from its file
        raise CliError("--set does not reach the Ray shard tasks: write the overrides into a recipe that `extends:` this one")


def print_dry_run(loaded, run_dir: Path, *, no_push: bool) -> int:
    if loaded.recipe.source.traces is not None:
        from curation.trace_import import describe_plan

        print(describe_plan(loaded))
        return 0
    from curation.dry_run import print_plan

    return print_plan(loaded, run_dir, no_push=no_push)


def require_hub_token() -> None:
    from curation.hub import HubError, require_token

    try:
        require_token()
    except HubError as exc:
        raise CliError(f"{exc}; or run with --no-push to write the run folder only (push it later with curate push)") from None


def run_here(loaded, run_dir: Path, *, quiet: bool):
    from curation import pipeline

    result = pipeline.run(loaded, run_dir, show_progress=not quiet)
    return result.summary, result.generation


def run_on_ray(args: argparse.Namespace, loaded, run_dir: Path):
    from curation.ray_executor import run_on_ray as execute

    recipe_ref = str(Path(args.recipe).resolve()) if Path(args.recipe).exists() else args.recipe
    summary, ray_run = execute(
        loaded, recipe_ref, run_dir, address=args.ray or None, shards=args.shards, gpus_per_shard=args.gpus_per_shard, retries=args.shard_retries, show_progress=not args.quiet
    )
    print(f"ray: {ray_run.shards} shards, {ray_run.generated} traces generated, {ray_run.cached} from the journals in {ray_run.seconds:.1f}s; merge {ray_run.merge_seconds:.1f}s")
    return summary, None


def run_one_shard(args: argparse.Namespace, loaded, run_dir: Path) -> int:
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


def quality_warning(quality: dict, metric: str) -> str | None:
    """Where labels show the selection metric at chance (its AUROC interval contains 0.5), say so in plain words."""
    check = quality.get("selection_metric_check")
    if not check or not check["n"]:
        return None
    if check["auroc"] is None:
        kind = "wrong" if check["wrong"] == check["n"] else "right"
        return f"warning: the {check['n']} labelled questions' answers are all {kind}: {metric} cannot be checked against them"
    if not check["at_chance"]:
        return None
    interval = check["interval"]
    shown = f"AUROC {check['auroc']:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"AUROC {check['auroc']:.3f}, too few labels for an interval"
    return (f"warning: {metric} does not separate right from wrong answers on the {check['n']} labelled questions ({shown}; chance is 0.5): "
            "the filtered split is then no better than a random one")


def quality_line(quality: dict) -> str:
    """One line on what labels measured of the kept: the guarantee, a measurement without one, or nothing."""
    if not quality.get("measured"):
        return "quality of the kept: unmeasured (no calibration labels; see the card's Quality section)"
    guarantee, labels = quality.get("guarantee"), quality["labels"]
    starved = [label for label, c in quality["per_class"].items() if c.get("too_few_labels")]
    if guarantee:
        scope = "within each predicted class" if guarantee["scope"] == "per_class" else "over the whole split"
        text = f"quality of the kept: expected share of wrong answers at most {guarantee['fdr']:g} {scope} ({labels['calibration']} calibration labels"
        text += f", {labels['fitting']} to fit the score" if labels.get("fitting") else ""
        text += ")" + (f"; too few labels to keep any of: {', '.join(starved)}" if starved else "")
        return text
    return f"quality of the kept: measured on {labels['calibration']} calibration labels, with no guarantee (strategy is not conformal)"


def print_summary(summary, run_dir: Path, generation) -> None:
    """What a run made, for the terminal: traces, questions, the selection per class, the drop reasons."""
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
        refusals = ", ".join(f"{reason} {count}" for reason, count in imported["refused_by_reason"].items())
        lines.append(f"imported: {imported['traces']} traces from {imported['rows']} rows, {imported['already_in_journal']} already in the journal, {imported['refused_rows']} rows refused"
                     + (f" ({refusals}; rows listed in stats.json)" if imported["refused_rows"] else ""))
    lines.append(f"questions: {summary.questions}   traces: {summary.traces}   unparsed: {summary.unparsed_traces}   truncated: {summary.truncated_traces}")
    lines.append(f"selection by {summary.metric}: kept {summary.kept} of {summary.questions}")
    for label, before in summary.per_class_before.items():
        lines.append(f"  {label:<32} {summary.per_class_after.get(label, 0):>5} kept of {before}")
    if summary.drop_reasons:
        lines.append("dropped: " + ", ".join(f"{reason} {count}" for reason, count in summary.drop_reasons.items()))
    lines.append(quality_line(summary.quality))
    lines.append(f'load it: datasets.load_dataset("{run_dir}", split="filtered")')
    print("\n".join(lines))
    warning = quality_warning(summary.quality, summary.metric)
    if warning:
        print(warning, file=sys.stderr)
