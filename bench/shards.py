"""Sharded generation vs one process, over several TGI-protocol servers on 127.0.0.1; and the merge.

    .venv/bin/python bench/shards.py                                  # 4 servers, 4 shards, 300 questions
    .venv/bin/python bench/shards.py --servers 2 --questions 200 --ray   # also through --ray (local Ray)

Each server is `tests/servers/tgi_server.py` in its own process, with `--latency` seconds per
request standing in for a GPU's time (it holds a slot while it waits). The baseline is one
`curate run` process driving every server at `concurrency` requests each. The sharded run is one
process per server (`curation.shards.run_shard` with that server as its share, the same
`concurrency`), started together, as one shard per node with its own replica would run; so the
requests in flight are the same in both and the comparison measures the client side. Then:

- `curate merge` on the sharded folder, against `curate score` on the baseline folder (the same
  scoring and writing, without the copy of the shard journals);
- the merged tables are checked equal to the baseline's (the bench fails loudly if not).

Figures are wall seconds and the user+system CPU of the client processes (children of this one).
Results are appended to bench/out/results.jsonl, which git ignores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from curation import run_folder

CURATE = [sys.executable, "-m", "curation.cli"]
SAMPLE_CSV = ROOT / "recipes" / "data" / "perturbqa-k562-sample.csv"

RECIPE = """
name: shard-bench
source:
  path: {csv}
  shuffle_seed: 0
  limit: {questions}
  label_column: label
  id_template: "{{{{ cell_line }}}}__{{{{ pert }}}}__{{{{ gene }}}}"
prompt:
  system: Think, then answer inside <answer></answer> tags.
  user: "In {{{{ cell_line }}}} cells, {{{{ pert }}}} was knocked down. What happens to {{{{ gene }}}}?"
generator:
  backend: tgi
  url: {urls}
  chat_template: chatml
  samples: {samples}
  temperature: 0.9
  top_p: 0.95
  max_new_tokens: {tokens}
  top_logprobs: 5
  concurrency: {concurrency}
  timeout: 60
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
select:
  strategy: per_class
  fraction: 0.2
"""

SHARD = """
import sys
from pathlib import Path
from curation.recipe.load import load_recipe
from curation.shards import Shard, run_shard
recipe, run_dir, index, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
stats = run_shard(load_recipe(recipe), run_dir, Shard(index, count), show_progress=False, endpoints=[index % int(sys.argv[5])])
assert stats.failed == 0, stats.failure_reasons
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_servers(count: int, latency: float, slots: int) -> tuple[list[subprocess.Popen], list[str]]:
    processes, urls = [], []
    for _ in range(count):
        port = free_port()
        command = [sys.executable, "-m", "tests.servers.tgi_server", "--port", str(port), "--latency", str(latency), "--max-concurrent-requests", str(slots)]
        processes.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    for url in urls:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {url} did not start")
            time.sleep(0.2)
    return processes, urls


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(commands: list[list[str]], env: dict) -> tuple[float, float]:
    """Run the commands at once; (wall seconds, CPU seconds of them). Servers are not children that exit, so not counted."""
    cpu, started = children_cpu(), time.monotonic()
    processes = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{process.args} failed: {err[-2000:]}")
    return time.monotonic() - started, children_cpu() - cpu


def same_tables(a: Path, b: Path) -> bool:
    return all(pq.read_table(a / name).equals(pq.read_table(b / name)) for name in (run_folder.SCORED_FILE, run_folder.FILTERED_FILE, run_folder.TRACES_FILE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request on the server (the GPU's time)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight per server")
    parser.add_argument("--ray", action="store_true", help="also run the shards through run_on_ray on a local Ray (one logical CPU per shard)")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    servers, urls = start_servers(args.servers, args.latency, max(8, args.concurrency * 2))
    result = {"bench": "shards", **{k: v for k, v in vars(args).items() if k != "ray"}, "traces": args.questions * (args.samples + 1), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            recipe = tmp / "recipe.yaml"
            recipe.write_text(
                RECIPE.format(csv=SAMPLE_CSV, questions=args.questions, urls=json.dumps(urls), samples=args.samples, tokens=args.tokens, concurrency=args.concurrency),
                encoding="utf-8",
            )
            single, sharded = tmp / "single", tmp / "sharded"
            wall, cpu = timed([[*CURATE, "run", str(recipe), "-o", str(single), "-q"]], env)
            result["single"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "traces_per_s": round(result["traces"] / wall, 1)}

            shard_commands = [[sys.executable, "-c", SHARD, str(recipe), str(sharded), str(i), str(args.servers), str(args.servers)] for i in range(args.servers)]
            wall, cpu = timed(shard_commands, env)
            result["sharded"] = {"shards": args.servers, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "traces_per_s": round(result["traces"] / wall, 1)}

            wall, cpu = timed([[*CURATE, "merge", str(recipe), "-o", str(sharded), "-q"]], env)
            journal_mb = sum(p.stat().st_size for p in (sharded / "shards").rglob("journal.sqlite*")) / 1e6
            result["merge"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "shard_journals_mb": round(journal_mb, 1)}
            wall, cpu = timed([[*CURATE, "score", str(single)]], env)
            result["score_baseline"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
            if not same_tables(sharded, single):
                raise SystemExit("merged run differs from the unsharded run")
            result["merged_equals_single"] = True

            if args.ray:
                code = (
                    "import sys, time, ray; from pathlib import Path; from curation.recipe.load import load_recipe; from curation.ray_executor import run_on_ray\n"
                    # one logical CPU per shard, so that every shard runs at once as on one node each
                    "ray.init(num_cpus=int(sys.argv[3]), include_dashboard=False, logging_level='WARNING', log_to_driver=False)\n"
                    "t = time.monotonic(); run_on_ray(load_recipe(sys.argv[1]), sys.argv[1], Path(sys.argv[2]), shards=int(sys.argv[3]), show_progress=False)\n"
                    "print(time.monotonic() - t)\n"
                )
                started = time.monotonic()
                out = subprocess.run([sys.executable, "-c", code, str(recipe), str(tmp / "ray"), str(args.servers)], cwd=ROOT, env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-2000:])
                inside = float(out.stdout.strip().splitlines()[-1])
                result["ray"] = {"wall_s_with_ray_start": round(time.monotonic() - started, 2), "wall_s_shards_and_merge": round(inside, 2)}
                if not same_tables(tmp / "ray", single):
                    raise SystemExit("the --ray run differs from the unsharded run")
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    result["load_after"] = os.getloadavg()[0]
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / "results.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
