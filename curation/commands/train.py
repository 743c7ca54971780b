"""`curate train`: fine-tune on a run's split with TRL SFTTrainer and (Q)LoRA (curation.train.main), and push the adapter."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    from curation.recipe.overrides import add_override_option  # light: yaml only
    from curation.train.splits import SPLITS

    p = subcommands.add_parser(
        "train",
        help="fine-tune on the run's filtered split with TRL SFTTrainer and (Q)LoRA",
        description="Fine-tune the recipe's train.base_model on a run's split with TRL SFTTrainer and (Q)LoRA; "
        "writes the adapter, tokenizer and a model card.",
    )
    p.add_argument("target", help="recipe file, run folder, or hf://datasets/ORG/NAME")
    p.add_argument(
        "--split", choices=list(SPLITS),
        help="rows to train on (default: train.split, else filtered); random: as many rows as filtered from every row; "
        "random-readable: the same count per predicted class as filtered, from readable answers; label-correct: the same, "
        "from answers equal to the label (uses the labels: an upper reference)",
    )
    p.add_argument("--dataset", help="run folder or Hub dataset id to train on (default: train.dataset, else the recipe's run folder)")
    p.add_argument("-o", "--output", help="adapter folder (default: train.output_dir, else <run folder>/adapters/<split>)")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    p.add_argument("--push", metavar="ORG/NAME", help="push the adapter to this Hub model repo")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step loss lines")
    add_override_option(p)  # --set train.learning_rate=5e-5
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import sys

    from curation.train.card import push_adapter
    from curation.train.config import TrainError
    from curation.train.main import counted, train
    from curation.train.target import resolve_target

    try:
        if args.push:
            from curation.hub import HubError, require_token

            try:
                require_token()  # fail now, not after the training
            except HubError as exc:
                raise TrainError(f"--push {args.push}: {exc}") from None
        target = resolve_target(args.target, args.dataset, args.overrides)
        if args.max_steps is not None:
            target.config = target.config.model_copy(update={"max_steps": args.max_steps})
        result = train(target, split=args.split, output_dir=Path(args.output) if args.output else None, show_progress=not args.quiet)
        loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        print(f"adapter: {result.output_dir} ({counted(result.steps, 'step')} on {counted(result.rows, 'row')} in {result.seconds:.0f}s{loss})")
        print(f"evaluate it: curate eval --model {result.output_dir}")
        if args.push:
            print(push_adapter(result.output_dir, args.push, private=args.private))
    except KeyboardInterrupt:
        print("interrupted: no adapter was written", file=sys.stderr)
        return 130
    return 0
