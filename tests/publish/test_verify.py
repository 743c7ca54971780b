"""`curate verify`: a published dataset's scored and filtered splits recomputed from its traces and recipe.yaml.

Against the local Hub (tests/servers/hub_server.py): publish a run, verify it, then tamper with one
published `kept` and one score in a new commit and verify again. And on run folders: what cannot be
verified says why.
"""

from __future__ import annotations

import io
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from curation import run_folder
from curation.verify import SCORE_RTOL, verify
from tests.builders.hub_run import curate_cli, make_run
from tests.conftest import REPO as CHECKOUT
from tests.servers import hub_fixtures
from tests.servers.hub_fixtures import hub_env, run_hub_client
from tests.servers.hub_server import HubTestServer

hub_server = hub_fixtures.hub_server

REPO = "test-org/verified"


def tampered_scored(data: bytes) -> tuple[bytes, str, str]:
    """The scored split with the first dropped row marked kept and the last row's cocoa_ppl raised by 10%; the two ids."""
    table = pq.read_table(io.BytesIO(data))
    kept = table.column("kept").to_pylist()
    flipped = kept.index(False)
    kept[flipped] = True
    scores = table.column("cocoa_ppl").to_pylist()
    changed = len(scores) - 1 if flipped != len(scores) - 1 else 0
    scores[changed] = scores[changed] * 1.1 + 0.01
    table = table.set_column(table.schema.get_field_index("kept"), "kept", pa.array(kept, pa.bool_()))
    table = table.set_column(table.schema.get_field_index("cocoa_ppl"), "cocoa_ppl", pa.array(scores, table.schema.field("cocoa_ppl").type))
    out = io.BytesIO()
    pq.write_table(table, out)
    ids = table.column("id").to_pylist()
    return out.getvalue(), ids[flipped], ids[changed]


def test_verify_a_published_dataset_then_a_tampered_commit(hub_server: HubTestServer, tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    env = hub_env(hub_server, tmp_path)
    pushed = curate_cli("push", str(run_dir), "--repo", REPO, env=env, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr

    first = curate_cli("verify", f"hf://datasets/{REPO}", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"verified hf://datasets/{REPO}: every row follows") and "scored 12 rows" in first.stdout

    # someone edits the published data in a new commit: one dropped row marked kept, one score changed
    scored = run_folder.SCORED_FILE
    data, flipped, changed = tampered_scored(hub_server.files(REPO)[scored])
    (tmp_path / "tampered.parquet").write_bytes(data)
    run_hub_client(hub_server, tmp_path, f"""
        from huggingface_hub import HfApi
        HfApi().upload_file(path_or_fileobj="tampered.parquet", path_in_repo="{scored}", repo_id="{REPO}", repo_type="dataset", commit_message="tamper")
        print("null")
        """)
    second = curate_cli("verify", f"hf://datasets/{REPO}", env=env, cwd=tmp_path)
    assert second.returncode == 1, second.stdout + second.stderr
    report = second.stderr
    assert report.startswith(f"NOT verified hf://datasets/{REPO}: 2 differing values in 2 column(s)"), report
    assert f"(id {flipped}): kept: published True, recomputed False" in report
    assert f"(id {changed}): cocoa_ppl: published " in report
    # the published filtered split was not touched, and still follows from the traces
    assert "filtered" not in report.split("\n", 1)[1]

    # the commit before the tampering still verifies
    commits = hub_server.commits(REPO)
    before = commits[-2].id
    earlier = curate_cli("verify", f"hf://{REPO}@{before}", env=env, cwd=tmp_path)
    assert earlier.returncode == 0, earlier.stderr


def test_scores_within_float32_precision_pass_and_beyond_it_fail(tmp_path) -> None:
    """The tolerance is what the published float32 logprobs allow, no looser: a relative change of 10x it is caught."""
    run_dir = make_run(tmp_path / "lab")
    assert verify(str(run_dir)).ok
    path = run_dir / run_folder.SCORED_FILE
    table = pq.read_table(path)
    column = table.schema.get_field_index("perplexity")
    values = table.column("perplexity").to_numpy()
    for factor, ok in ((1 + SCORE_RTOL / 10, True), (1 + SCORE_RTOL * 10, False)):
        nudged = values.copy()
        nudged[3] *= factor
        pq.write_table(table.set_column(column, "perplexity", pa.array(nudged)), path)
        result = verify(str(run_dir))
        assert result.ok is ok, result.report()
    assert dict(result.counts) == {("scored", "perplexity"): 1}


def test_what_cannot_be_verified_says_why(tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    no_traces = tmp_path / "no-traces"
    shutil.copytree(run_dir, no_traces)
    shutil.rmtree(no_traces / "traces")
    result = curate_cli("verify", str(no_traces), env=env, cwd=CHECKOUT)
    assert result.returncode == 2 and "no traces config was published (traces/train-*.parquet)" in result.stderr, result.stderr

    judged = tmp_path / "judged"
    shutil.copytree(run_dir, judged)
    recipe = judged / run_folder.RECIPE_FILE
    recipe.write_text(recipe.read_text() + "critic:\n  prompt: 'Grade {{ trace }}'\n")
    result = curate_cli("verify", str(judged), env=env, cwd=CHECKOUT)
    assert result.returncode == 2 and "the critic's replies are not published" in result.stderr, result.stderr


def test_a_run_of_imported_traces_verifies(tmp_path) -> None:
    """source.traces: K and the reference come from the published traces, planned as the import planned them."""
    original = make_run(tmp_path / "lab")
    (tmp_path / "imported.yaml").write_text(f"""\
name: reimported
source:
  path: {original}/traces/train-*.parquet
  label_column: label
  traces:
    preset: curate
    questions: {original}/data/scored-*.parquet
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: 0.5
""")
    ran = curate_cli("run", str(tmp_path / "imported.yaml"), "-o", str(tmp_path / "run"), "--no-push", env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd=CHECKOUT)
    assert ran.returncode == 0, ran.stderr
    result = verify(str(tmp_path / "run"))
    assert result.ok and result.rows["scored"] == 12, result.report()
