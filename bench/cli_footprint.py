"""The whole `curate run` process against an endpoint: peak RSS, client CPU and start-up imports.

    scripts/build_llama_server.sh                # once (cached)
    .venv/bin/python bench/cli_footprint.py      # 3 rounds, medians
    .venv/bin/python bench/cli_footprint.py --baseline /path/to/old/checkout   # and the same run with other code, each round

Workload (bench/runner_saturation.py's): the quickstart's 48 PerturbQA prompts x 4 samples, 48
tokens each, top-5 logprobs, against llama-server (embedded SmolLM2-135M, -np 8) on 127.0.0.1.
Each round runs, one after the other, as separate processes:

- `curate run`: `python -m curation.cli run RECIPE -o FRESH_DIR -q`, the whole command (recipe,
  source, generation, journal, scoring, selection, parquet, card);
- bare: a client that posts the same 48 n=4 requests with httpx and asyncio.gather, then exits
  (the floor a Python HTTP client pays: interpreter, httpx, JSON).

Peak RSS and CPU (user + system) come from getrusage of the finished child. The figures of merit
are curate's absolute peak RSS and CPU (issue 25's targets: at most 150 MB and 1.5 s) and the
ratio to bare in the same round. `-X importtime` of `curate run` is also printed: the heaviest
top-level imports of the command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.builders.llama_server import LlamaServer, llama_server_binary  # noqa: E402

PROMPTS, SAMPLES, MAX_TOKENS = 48, 4, 48

RECIPE = """\
extends: {quickstart}
name: footprint
source:
  limit: {prompts}
generator:
  backend: openai
  url: {url}
  model: embedded
  samples: {samples}
  reference: false
  use_n: true
  max_new_tokens: {max_tokens}
  top_logprobs: 5
  concurrency: 8
score:
  metric: self_consistency
select:
  fraction: 0.25
"""

BARE = textwrap.dedent(
    """
    import asyncio, json, sys
    import httpx

    url, prompts, samples, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    async def main():
        async with httpx.AsyncClient(timeout=600) as client:
            async def one(i):
                body = {"model": "embedded", "messages": [{"role": "user", "content": f"Question {i}: is gene G{i} up or down?"}],
                        "n": samples, "max_tokens": max_tokens, "logprobs": True, "top_logprobs": 5, "seed": i, "temperature": 1.0}
                response = await client.post(url + "/v1/chat/completions", json=body)
                return sum(len(c["logprobs"]["content"]) for c in response.json()["choices"])
            return sum(await asyncio.gather(*(one(i) for i in range(prompts))))

    print(json.dumps({"tokens": asyncio.run(main())}))
    """
)


def peak_rss_mb(command: list[str], env: dict, cwd: Path = ROOT) -> tuple[float, float, str]:
    """Peak RSS (MB) and CPU (s) of a command, measured by a fresh wrapper process so maxima do not carry over."""
    wrapper = textwrap.dedent(
        """
        import json, resource, subprocess, sys
        done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(json.dumps({"rc": done.returncode, "rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime, "err": done.stderr[-1500:]}))
        """
    )
    # cwd: `python -m` puts the working directory first on sys.path, so it decides which curation runs
    out = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True, check=True, cwd=cwd)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{command[:5]} failed: {result['err']}")
    return result["rss_mb"], result["cpu_s"], result["err"]


def heaviest_imports(recipe: Path, run_dir: Path, env: dict, top: int = 12) -> list[tuple[float, str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "curation.cli", "run", str(recipe), "-o", str(run_dir), "-q"], env=env, capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
            if cumulative.isdigit() and not name.startswith(" ") and "." not in name.strip() or name.strip().startswith("curation."):
                rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of other code (e.g. an older commit) to run the same command with, in each round")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    results = []
    with tempfile.TemporaryDirectory() as folder, LlamaServer(llama_server_binary(), Path(folder) / "llama.log") as server:
        recipe = Path(folder) / "footprint.yaml"
        recipe.write_text(RECIPE.format(quickstart=ROOT / "recipes" / "quickstart.yaml", prompts=PROMPTS, url=server.url, samples=SAMPLES, max_tokens=MAX_TOKENS))
        bare_script = Path(folder) / "bare.py"
        bare_script.write_text(BARE)
        for round_ in range(args.rounds):
            run_dir = Path(folder) / f"run-{round_}"
            curate_rss, curate_cpu, _ = peak_rss_mb([sys.executable, "-m", "curation.cli", "run", str(recipe), "-o", str(run_dir), "-q"], env)
            bare_rss, bare_cpu, _ = peak_rss_mb([sys.executable, str(bare_script), server.url, str(PROMPTS), str(SAMPLES), str(MAX_TOKENS)], env)
            row = {"round": round_, "curate_rss_mb": round(curate_rss, 1), "curate_cpu_s": round(curate_cpu, 2), "bare_rss_mb": round(bare_rss, 1), "bare_cpu_s": round(bare_cpu, 2)}
            if args.baseline is not None:
                base_env = {**env, "PYTHONPATH": str(args.baseline.resolve())}
                base_rss, base_cpu, _ = peak_rss_mb([sys.executable, "-m", "curation.cli", "run", str(recipe), "-o", str(Path(folder) / f"base-{round_}"), "-q"], base_env, cwd=args.baseline.resolve())
                row.update(baseline_rss_mb=round(base_rss, 1), baseline_cpu_s=round(base_cpu, 2))
            results.append(row)
            print(json.dumps(row), flush=True)
        imports = heaviest_imports(recipe, Path(folder) / "run-imports", env)
    median = {key: statistics.median(r[key] for r in results) for key in results[0] if key != "round"}
    print(json.dumps({"median": median, "rss_ratio": round(median["curate_rss_mb"] / median["bare_rss_mb"], 2), "cpu_ratio": round(median["curate_cpu_s"] / median["bare_cpu_s"], 2)}))
    print("heaviest imports of `curate run` (cumulative s):")
    for seconds, name in imports:
        print(f"  {seconds:6.3f}  {name}")


if __name__ == "__main__":
    main()
