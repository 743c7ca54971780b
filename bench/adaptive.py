"""Adaptive sampling vs fixed K: generated tokens, wall time, kept-set overlap, kept accuracy.

    PYTHONPATH=. .venv/bin/python bench/adaptive.py tgi       # TGI protocol test server, 300 PerturbQA questions
    PYTHONPATH=. .venv/bin/python bench/adaptive.py llama     # llama-server + embedded SmolLM2, country -> continent

Each mode runs in its own run folder (its own journal), so every run pays for what it uses. For
every per-class budget (10%, 30%) it runs fixed K, `adaptive: exact` and `adaptive: esc`, and
reports the generated tokens (the run's traces), wall time, the Jaccard overlap of the kept set
with fixed K's, and kept accuracy against the labels with a 95% Wilson interval. With
llama-server a second fixed-K run measures the server's own run-to-run agreement (its batching
can change low-order bits), the floor any comparison with it stands on.
Figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation import pipeline  # noqa: E402
from curation.recipe.load import load_recipe  # noqa: E402

TGI_RECIPE = """
name: bench-adaptive-tgi
source:
  path: {csv}
  shuffle_seed: 0
  id_template: "{{{{ cell_line }}}}__{{{{ pert }}}}__{{{{ gene }}}}"
  label_column: label
prompt:
  system: Think, then answer inside <answer></answer> tags.
  user: "In {{{{ cell_line }}}} cells, {{{{ pert }}}} was knocked down. What happens to {{{{ gene }}}}?"
generator:
  backend: tgi
  url: {url}
  chat_template: chatml
  samples: 8
  max_new_tokens: 96
  stop: ["</answer>"]
  top_logprobs: 5
  concurrency: 16
{adaptive}
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: {fraction}
"""

LLAMA_RECIPE = """
name: bench-adaptive-llama
source:
  path: {csv}
  label_column: continent
prompt:
  system: Answer with the name of a continent.
  user: "Which continent is {{{{ country }}}} in? {{{{ country }}}} is in"
generator:
  backend: openai
  url: {url}
  model: smollm2
  use_n: false
  samples: 8
  temperature: 0.7
  top_p: 0.9
  max_new_tokens: 24
  stop: ["\\n", "."]
  top_logprobs: 5
  concurrency: 8
{adaptive}
answer:
  tag: answer
  labels:
    Africa: [africa, african]
    Asia: [asia, asian]
    Europe: [europe, european]
    North America: [north america, north american]
    South America: [south america, south american]
    Oceania: [oceania, australia]
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: {fraction}
"""

MODES = {
    "fixed": "",
    "exact": "  adaptive:\n    window: 2",
    "esc": "  adaptive:\n    mode: esc\n    window: 2",
    "esc-w4": "  adaptive:\n    mode: esc\n    window: 4",
    # DeepConf-high (keep_top 0.9) and DeepConf-low (0.1); windows of 8 tokens for ~30-token traces
    "deepconf": "  adaptive:\n    mode: deepconf\n    window: 2\n    warmup: 16\n    confidence_window: 8\n    keep_top: 0.9",
    "deepconf-low": "  adaptive:\n    mode: deepconf\n    window: 2\n    warmup: 16\n    confidence_window: 8\n    keep_top: 0.1",
    # cuts only below (about) the least confident warm-up trace: fewer cuts, nearer fixed K
    "deepconf-0.99": "  adaptive:\n    mode: deepconf\n    window: 2\n    warmup: 16\n    confidence_window: 8\n    keep_top: 0.99",
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def read(run_dir: Path, pattern: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(run_dir.glob(pattern))])


def one_run(template: str, csv: str, url: str, fraction: float, mode: str, folder: Path) -> dict:
    path = folder / f"{mode}-{fraction}.yaml"
    path.write_text(template.format(csv=csv, url=url, fraction=fraction, adaptive=MODES[mode.split("#")[0]]), encoding="utf-8")
    started = time.perf_counter()
    result = pipeline.run(load_recipe(str(path)), folder / f"{mode}-{fraction}", show_progress=False)
    seconds = time.perf_counter() - started
    scored = read(folder / f"{mode}-{fraction}", "data/scored-*.parquet")
    traces = read(folder / f"{mode}-{fraction}", "traces/*.parquet")
    kept = [r for r in scored.select(["id", "kept", "answer", "label"]).to_pylist() if r["kept"]]
    correct = sum(r["answer"] == r["label"] for r in kept if r.get("label") is not None)
    labelled = sum(r.get("label") is not None for r in kept)
    return {
        "mode": mode,
        "fraction": fraction,
        "seconds": round(seconds, 2),
        "tokens": int(sum(traces["n_tokens"].to_pylist())),
        "traces": traces.num_rows,
        "kept_ids": sorted(r["id"] for r in kept),
        "kept_accuracy": correct / labelled if labelled else None,
        "kept_accuracy_ci": wilson(correct, labelled),
        "adaptive": result.summary.generation.get("adaptive"),
    }


def compare(results: list[dict]) -> list[dict]:
    table = []
    for fraction in sorted({r["fraction"] for r in results}):
        fixed = next(r for r in results if r["fraction"] == fraction and r["mode"] == "fixed")
        for r in (r for r in results if r["fraction"] == fraction):
            a, b = set(fixed["kept_ids"]), set(r["kept_ids"])
            table.append(
                {
                    "fraction": fraction,
                    "mode": r["mode"],
                    "tokens": r["tokens"],
                    "tokens_vs_fixed": round(r["tokens"] / fixed["tokens"], 3),
                    "seconds": r["seconds"],
                    "seconds_vs_fixed": round(r["seconds"] / fixed["seconds"], 3),
                    "kept": len(b),
                    "jaccard_vs_fixed": round(len(a & b) / len(a | b), 3) if a | b else 1.0,
                    "kept_accuracy": None if r["kept_accuracy"] is None else round(r["kept_accuracy"], 3),
                    "kept_accuracy_ci": [round(x, 3) for x in r["kept_accuracy_ci"]],
                    "rounds": (r["adaptive"] or {}).get("rounds"),
                    "cut": ((r["adaptive"] or {}).get("early_stop") or {}).get("cut"),
                    "server_tokens": r.get("server_tokens"),
                }
            )
    return table


def print_table(title: str, table: list[dict]) -> None:
    print(f"\n{title}\n")
    print("| budget | mode | tokens | vs fixed | wall s | vs fixed | kept | Jaccard vs fixed | kept accuracy [95% CI] | rounds | cut traces |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for t in table:
        acc = "–" if t["kept_accuracy"] is None else f"{t['kept_accuracy']:.3f} [{t['kept_accuracy_ci'][0]:.3f}, {t['kept_accuracy_ci'][1]:.3f}]"
        print(f"| {t['fraction']:.0%} | {t['mode']} | {t['tokens']:,} | {t['tokens_vs_fixed']:.2f} | {t['seconds']:.1f} | {t['seconds_vs_fixed']:.2f} | {t['kept']} | {t['jaccard_vs_fixed']:.3f} | {acc} | {t['rounds'] or '–'} | {t['cut'] if t['cut'] is not None else '–'} |")


def bench_tgi(fractions, folder: Path, modes, hedge_rate: float = 0.0) -> list[dict]:
    from tests.servers.tgi_server import TGITestServer

    csv = str(REPO / "recipes" / "data" / "perturbqa-k562-sample.csv")
    results = []
    # token_latency: streams take time, so a cancelled one really stops early (server_tokens)
    with TGITestServer(max_concurrent_requests=64, hedge_rate=hedge_rate, token_latency=0.0005) as tgi:
        for fraction in fractions:
            for mode in modes:
                before = tgi.generated_tokens
                results.append(one_run(TGI_RECIPE, csv, tgi.url, fraction, mode, folder))
                results[-1]["server_tokens"] = tgi.generated_tokens - before
                print(f"  tgi {mode} {fraction}: {results[-1]['tokens']} tokens, {results[-1]['seconds']} s", file=sys.stderr)
    return results


def bench_llama(fractions, folder: Path, modes) -> list[dict]:
    from tests.builders.llama_server import LlamaServer, llama_server_binary

    csv = str(REPO / "bench" / "data" / "countries.csv")
    results = []
    with LlamaServer(llama_server_binary(), folder / "llama-server.log", slots=8) as server:
        for fraction in fractions:
            for mode in tuple(modes) + (("fixed#again",) if fraction == fractions[0] else ()):
                results.append(one_run(LLAMA_RECIPE, csv, server.url, fraction, mode, folder))
                print(f"  llama {mode} {fraction}: {results[-1]['tokens']} tokens, {results[-1]['seconds']} s", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["tgi", "llama"])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--modes", nargs="+", default=["exact", "esc", "esc-w4"], choices=[m for m in MODES if m != "fixed"], help="compared with fixed K")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--hedge-rate", type=float, default=0.0, help="tgi: share of sampled traces that hedge (low confidence, near-random label)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmp:
        if args.workload == "tgi":
            results = bench_tgi(args.fractions, Path(tmp), ["fixed", *args.modes], args.hedge_rate)
        else:
            results = bench_llama(args.fractions, Path(tmp), ["fixed", *args.modes])
    table = compare(results)
    print_table(f"adaptive sampling, {args.workload} workload, K = 8, cocoa_ppl, per-class budgets", table)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
