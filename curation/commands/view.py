"""`curate view RUN_DIR`: a self-contained HTML report of what the filter kept and dropped (optionally served)."""

from __future__ import annotations

import argparse


def add_parser(subcommands) -> None:
    p = subcommands.add_parser("view", help="write a self-contained HTML report of what the filter kept and dropped")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="where to write the page (default RUN_DIR/report.html)")
    p.add_argument("--per-class", type=int, default=30, help="questions embedded per class: most and least certain plus a sample (default 30)")
    p.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 instead of only writing it")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000; 0 picks a free one)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from curation.view import serve, write_report

    out = write_report(args.run_dir, args.output, args.per_class)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if args.serve:
        serve(out, args.port)
    return 0
