"""`curate eval`: score a run's metrics against its labels, or (--model) a fine-tuned adapter's answers."""

from __future__ import annotations

import argparse
from pathlib import Path

# The defaults of curation.eval.bootstrap, repeated so that building the parser imports no numpy;
# tests/eval/test_eval_run.py checks that they agree.
DEFAULT_DRAWS = 1000
DEFAULT_SEED = 0


def add_parser(subcommands) -> argparse.ArgumentParser:
    p = subcommands.add_parser("eval", help="measure how well each metric separates right from wrong answers (needs labels)")
    p.add_argument("run_dir", nargs="?", help="run folder (with a label column, from source.label_column); optional with --model")
    p.add_argument("--fractions", help="comma-separated budgets for the per-class vs global comparison (default 0.1,0.25,0.5 and the recipe's)")
    p.add_argument("--no-card", action="store_true", help="do not add the results section to the run's card")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_DRAWS, metavar="N", help=f"resamples for the 95%% intervals and paired comparisons (default {DEFAULT_DRAWS}; 0: none)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap resamples (default 0)")
    p.add_argument("--model", metavar="ADAPTER_DIR", help="instead, evaluate a trained adapter's answers on the labelled rows (curate train output)")
    p.add_argument("--split", help="with --model: split to evaluate on")
    p.add_argument("--limit", type=int, help="with --model: evaluate at most this many rows")
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    if getattr(args, "model", None):
        return evaluate_adapter(args)
    if not args.run_dir:
        raise ValueError("give a run folder, or --model ADAPTER_DIR to evaluate a trained adapter")
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else None
    if args.bootstrap < 0:
        raise ValueError("--bootstrap must be 0 (no intervals) or a number of resamples")
    from curation.eval.report import summary_text
    from curation.eval.run import evaluate_run

    report = evaluate_run(args.run_dir, fractions=fractions, card=not args.no_card, bootstrap=args.bootstrap, seed=args.seed)
    print(summary_text(report, Path(args.run_dir)))
    return 0


def evaluate_adapter(args) -> int:
    """`curate eval [RUN_DIR] --model ADAPTER_DIR [--split S] [--limit N]`: the adapter's answers on held-out labelled questions."""
    from curation.eval import model

    recipe = getattr(args, "recipe", None) or model.recipe_from_run_dir(getattr(args, "run_dir", None), args.model)
    report = model.evaluate_model(
        args.model,
        split=getattr(args, "split", None),
        limit=getattr(args, "limit", None),
        recipe=recipe,
        baseline=bool(getattr(args, "baseline", False)),
    )
    print(model.summary_text(report))
    return 0
