"""The Ray executor: a run's shards as Ray tasks, with one progress bar, retries, then one merge.

    curate run RECIPE --ray                        # Ray's default: RAY_ADDRESS, a running local Ray, or a new one
    curate run RECIPE --ray auto --shards 16       # the cluster this node belongs to
    curate run RECIPE --ray ray://head:10001       # through Ray Client

Ray schedules; curate does not. Each shard is one task (`curation.shards.run_shard`) asking for
one CPU and, for the `local` backend, `--gpus-per-shard` GPUs (default 1 when the cluster has
GPUs). Endpoint backends split the recipe's endpoints between the shards instead: with at least
as many endpoints as shards each shard gets its own endpoints; with more shards than endpoints
the shards on one endpoint share its `concurrency`. A task that raises (traces that failed after
their own retries) or whose worker dies is retried by Ray up to `--shard-retries` times, and a
retry resumes from the shard's journal, so nothing paid for is bought twice. Progress is the
sum of finished traces in the shard journals, polled every two seconds.

Assumption: the run folder, the recipe and its source file are on a file system every node
sees at the same path (NFS, Lustre, ...), as they are for the Slurm array in scripts/slurm/.

Ray is an optional extra (`pip install "curate[ray]"`), imported only here and only when asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from curation.progress import progress_bar
from curation.shards import Shard, ShardError, merge_shards, planned_traces, run_shard, shard_trace_count

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


class ShardFailed(RuntimeError):
    """A shard finished with failed traces; raised inside the task so that Ray retries it."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError('--ray needs Ray, an optional extra: pip install "curate[ray]" (or pip install ray)') from None
    return ray


def endpoint_shares(n_endpoints: int, shards: int, concurrency: int) -> list[tuple[list[int] | None, int | None]]:
    """(endpoint indices, concurrency per endpoint) for each shard; (None, None) keeps the recipe's."""
    if n_endpoints == 0:
        return [(None, None)] * shards
    if shards <= n_endpoints:
        return [(list(range(i, n_endpoints, shards)), None) for i in range(shards)]
    shares = []
    for i in range(shards):
        endpoint = i % n_endpoints
        sharing = len(range(endpoint, shards, n_endpoints))  # shards sent to this endpoint
        shares.append(([endpoint], max(1, concurrency // sharing)))
    return shares


def _generate_shard(recipe_ref: str, run_dir: str, index: int, count: int, endpoints: list[int] | None, concurrency: int | None) -> dict:
    """The Ray task: one shard, in a worker process (module-level so Ray pickles it by reference)."""
    from curation.recipe.load import load_recipe

    loaded = load_recipe(recipe_ref)
    stats = run_shard(loaded, Path(run_dir), Shard(index, count), show_progress=False, endpoints=endpoints, concurrency=concurrency)
    if stats.failed:
        reason = stats.failure_reasons.most_common(1)[0][0] if stats.failure_reasons else "see the shard's journal"
        raise ShardFailed(f"shard {index}/{count}: {stats.failed} traces failed ({reason[:200]})")
    return {"index": index, "generated": stats.generated, "cached": stats.cached, "tokens": stats.tokens, "seconds": stats.seconds}


@dataclass
class RayRun:
    shards: int
    seconds: float  # generation, all shards
    merge_seconds: float
    generated: int
    cached: int
    tokens: int


def default_shards(loaded, resources: dict) -> int:
    generator = loaded.recipe.generator
    if generator.backend != "local":
        return max(1, len(generator.urls))
    return max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))


def run_on_ray(
    loaded,
    recipe_ref: str,
    run_dir: Path,
    *,
    address: str | None = None,
    shards: int | None = None,
    gpus_per_shard: float | None = None,
    retries: int = 2,
    show_progress: bool = True,
):
    """Generate every shard on Ray, then merge and publish in this process; returns (summary, RayRun)."""
    ray = import_ray()
    run_dir = Path(run_dir).resolve()
    if not ray.is_initialized():
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=False)
    resources = ray.cluster_resources()
    count = shards or default_shards(loaded, resources)
    generator = loaded.recipe.generator
    if gpus_per_shard is None:
        gpus_per_shard = 1 if generator.backend == "local" and resources.get("GPU", 0) > 0 else 0
    if gpus_per_shard > resources.get("GPU", 0):
        raise ShardError(f"each shard asks for {gpus_per_shard} GPUs but the Ray cluster has {resources.get('GPU', 0)}: lower --gpus-per-shard")
    shares = endpoint_shares(len(generator.urls) if generator.backend != "local" else 0, count, generator.concurrency)
    task = ray.remote(_generate_shard)
    pending = {}
    for index, (endpoints, concurrency) in enumerate(shares):
        ref = task.options(num_cpus=1, num_gpus=gpus_per_shard, max_retries=retries, retry_exceptions=True, name=f"curate-shard-{index}-of-{count}").remote(
            recipe_ref, str(run_dir), index, count, endpoints, concurrency
        )
        pending[ref] = index

    from curation.source import load_questions

    total = planned_traces(loaded, len(load_questions(loaded).questions))
    started = time.monotonic()
    bar = progress_bar(total=total, desc=f"generate ({count} shards on Ray)", unit="trace", disable=not show_progress)
    results: dict[int, dict] = {}
    failed: dict[int, str] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - reported per shard below, after the others finish
                    failed[index] = str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1][:300]
            bar.n = min(total, sum(shard_trace_count(run_dir, Shard(i, count)) for i in range(count)))
            bar.refresh()
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        bar.close()
    seconds = time.monotonic() - started
    if failed:
        lines = "; ".join(f"{i}/{count}: {reason}" for i, reason in sorted(failed.items()))
        raise RuntimeError(f"{len(failed)} of {count} shards failed after {retries} retries, nothing merged ({lines}); run the same command again: each shard resumes from its journal")
    merge_started = time.monotonic()
    summary, _ = merge_shards(loaded, run_dir, show_progress=show_progress)
    done = results.values()
    return summary, RayRun(
        count, seconds, time.monotonic() - merge_started, sum(r["generated"] for r in done), sum(r["cached"] for r in done), sum(r["tokens"] for r in done)
    )

