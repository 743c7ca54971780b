"""The local Hub answers the real clients (huggingface_hub, datasets) as the Hub would.

Client code runs in subprocesses (see tests/servers/hub_fixtures.py for why); the
server's state is then inspected directly. A few protocol checks that no well-behaved
client would trigger (wrong hashes, unsigned URLs, parquet sent as a regular file) use
httpx in-process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.servers import hub_fixtures
from tests.servers.hub_fixtures import HUB_TEST_READ_TOKEN, HUB_TEST_TOKEN, run_hub_client
from tests.servers.hub_server import HubTestServer

hub_server = hub_fixtures.hub_server  # makes the fixture visible to this module's tests

AUTH = {"Authorization": f"Bearer {HUB_TEST_TOKEN}"}

README = """\
---
license: mit
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
- config_name: traces
  data_files:
  - split: train
    path: traces/train.parquet
---
# A curated dataset
"""


def parquet_bytes(**columns: list) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def write_dataset_folder(root) -> None:
    """A run folder in the Hub's layout: two splits of one config, and a second config."""
    (root / "data").mkdir(parents=True)
    (root / "traces").mkdir()
    train = parquet_bytes(id=[1, 2, 3], answer=["up", "down", "none"])
    (root / "data" / "train-00000-of-00001.parquet").write_bytes(train)
    (root / "data" / "test-00000-of-00001.parquet").write_bytes(parquet_bytes(id=[4], answer=["up"]))
    traces = parquet_bytes(id=[1, 1], text=["<think>a</think>", "<think>b</think>"])
    (root / "traces" / "train.parquet").write_bytes(traces)
    (root / "README.md").write_text(README)


# --------------------------------------------------------------------------------------
# huggingface_hub against the server


def test_whoami_and_tokens(hub_server: HubTestServer, tmp_path) -> None:
    result = run_hub_client(
        hub_server,
        tmp_path,
        f"""
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi()
        me = api.whoami()
        try:
            api.whoami(token="hf_wrong")
            bad = None
        except HfHubHTTPError as err:
            bad = [err.response.status_code, str(err).splitlines()[0]]
        try:
            api.create_repo("test-org/ro", repo_type="dataset", token="{HUB_TEST_READ_TOKEN}")
            read_only = None
        except HfHubHTTPError as err:
            read_only = err.response.status_code
        print(json.dumps({{"name": me["name"], "role": me["auth"]["accessToken"]["role"],
                           "bad": bad, "read_only": read_only}}))
        """,
    )
    assert result == {
        "name": "test-user",
        "role": "write",
        "bad": [401, "Invalid user token."],
        "read_only": 403,
    }
    assert not hub_server.repo_exists("test-org/ro")


def test_create_repo_private_and_exist_ok(hub_server: HubTestServer, tmp_path) -> None:
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi()
        url = api.create_repo("test-org/private-ds", repo_type="dataset", private=True)
        again = api.create_repo("test-org/private-ds", repo_type="dataset", exist_ok=True)
        try:
            api.create_repo("test-org/private-ds", repo_type="dataset")
            conflict = None
        except HfHubHTTPError as err:
            conflict = err.response.status_code
        info = api.dataset_info("test-org/private-ds")
        anonymous_sees_it = api.repo_exists("test-org/private-ds", repo_type="dataset", token=False)
        api.update_repo_settings("test-org/private-ds", repo_type="dataset", private=False)
        anonymous_after = api.repo_exists("test-org/private-ds", repo_type="dataset", token=False)

        api.create_repo("mine", repo_type="model")  # no namespace: the user's own
        model = api.model_info("test-user/mine")
        api.delete_repo("test-user/mine", repo_type="model")
        api.create_repo("test-org/demo", repo_type="space", space_sdk="static")
        space = api.space_info("test-org/demo")
        print(json.dumps({"url": str(url), "again": str(again), "conflict": conflict, "private": info.private,
                          "files": [s.rfilename for s in info.siblings], "anonymous": anonymous_sees_it,
                          "anonymous_after": anonymous_after, "model": model.id, "space_sdk": space.sdk}))
        """,
    )
    assert result["url"] == f"{hub_server.url}/datasets/test-org/private-ds"
    assert result["again"] == result["url"]
    assert result["conflict"] == 409
    assert result["private"] is True
    assert result["files"] == [".gitattributes"]  # the Hub's initial commit
    assert result["anonymous"] is False  # private repos are invisible without a token
    assert result["anonymous_after"] is True
    assert not hub_server.is_private("test-org/private-ds")
    assert result["model"] == "test-user/mine"
    assert not hub_server.repo_exists("test-user/mine", repo_type="model")  # deleted
    assert result["space_sdk"] == "static"


def test_upload_folder_parquet_and_readme_in_one_commit(hub_server: HubTestServer, tmp_path) -> None:
    write_dataset_folder(tmp_path / "run")
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from pathlib import Path
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download

        api = HfApi()
        api.create_repo("test-org/curated", repo_type="dataset")
        info = api.upload_folder(folder_path="run", repo_id="test-org/curated", repo_type="dataset",
                                 commit_message="Push curated run")
        files = api.list_repo_files("test-org/curated", repo_type="dataset")
        parquet = hf_hub_download("test-org/curated", "data/train-00000-of-00001.parquet", repo_type="dataset")
        readme = hf_hub_download("test-org/curated", "README.md", repo_type="dataset")
        paths = api.get_paths_info("test-org/curated", ["README.md", "data", "nope"], repo_type="dataset")
        snapshot = snapshot_download("test-org/curated", repo_type="dataset")
        print(json.dumps({"oid": info.oid, "files": files, "parquet": open(parquet, "rb").read().hex(),
                          "readme": open(readme).read(), "paths": [type(p).__name__ for p in paths],
                          "snapshot": sorted(str(p.relative_to(snapshot)) for p in Path(snapshot).rglob("*.parquet"))}))
        """,
    )
    commits = hub_server.commits("test-org/curated")
    assert [c.title for c in commits] == ["initial commit", "Push curated run"]
    assert result["oid"] == commits[-1].id
    assert sorted(result["files"]) == [
        ".gitattributes",
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "traces/train.parquet",
    ]
    local = (tmp_path / "run" / "data" / "train-00000-of-00001.parquet").read_bytes()
    assert bytes.fromhex(result["parquet"]) == local
    assert result["readme"] == README
    assert result["paths"] == ["RepoFile", "RepoFolder"]  # absent paths are left out
    assert result["snapshot"] == [
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "traces/train.parquet",
    ]

    blobs = hub_server.blobs("test-org/curated")
    assert blobs["data/train-00000-of-00001.parquet"].is_lfs  # through the LFS batch API...
    assert not blobs["README.md"].is_lfs  # ... and the card inline in the commit
    requests = [(r.method, r.path) for r in hub_server.request_log]
    assert requests.count(("POST", "/api/datasets/test-org/curated/commit/main")) == 1
    assert ("POST", "/datasets/test-org/curated.git/info/lfs/objects/batch") in requests
    assert sum(1 for method, path in requests if method == "PUT" and path.startswith("/_test-lfs/")) == 3


def test_create_commit_with_create_pr(hub_server: HubTestServer, tmp_path) -> None:
    hub_server.seed("test-org/pr-ds", {"README.md": "---\nlicense: mit\n---\n"})
    main_before = hub_server.refs("test-org/pr-ds")["main"]
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

        api = HfApi()
        pr = api.create_commit("test-org/pr-ds", [CommitOperationAdd("data/new.parquet", b"PAR1" + bytes(64))],
                               commit_message="Propose data", repo_type="dataset", create_pr=True)
        follow_up = api.create_commit("test-org/pr-ds", [CommitOperationAdd("notes.txt", b"more")],
                                      commit_message="Follow-up", repo_type="dataset", revision=pr.pr_revision)
        on_pr = api.list_repo_files("test-org/pr-ds", repo_type="dataset", revision="refs/pr/1")
        on_main = api.list_repo_files("test-org/pr-ds", repo_type="dataset")
        data = hf_hub_download("test-org/pr-ds", "data/new.parquet", repo_type="dataset", revision="refs/pr/1")
        refs = api.list_repo_refs("test-org/pr-ds", repo_type="dataset", include_pull_requests=True)
        print(json.dumps({"pr_url": pr.pr_url, "pr_num": pr.pr_num, "pr_revision": pr.pr_revision,
                          "follow_up": follow_up.oid, "on_pr": on_pr, "on_main": on_main,
                          "data": open(data, "rb").read().hex(),
                          "prs": [[r.ref, r.target_commit] for r in refs.pull_requests]}))
        """,
    )
    assert result["pr_url"] == f"{hub_server.url}/datasets/test-org/pr-ds/discussions/1"
    assert (result["pr_num"], result["pr_revision"]) == (1, "refs/pr/1")
    assert sorted(result["on_pr"]) == [".gitattributes", "README.md", "data/new.parquet", "notes.txt"]
    assert sorted(result["on_main"]) == [".gitattributes", "README.md"]
    assert bytes.fromhex(result["data"]) == b"PAR1" + bytes(64)
    assert result["prs"] == [["refs/pr/1", result["follow_up"]]]
    assert hub_server.refs("test-org/pr-ds")["main"] == main_before
    assert [c.title for c in hub_server.commits("test-org/pr-ds", revision="refs/pr/1")][-2:] == [
        "Propose data",
        "Follow-up",
    ]
    assert [pr.base for pr in hub_server.pull_requests("test-org/pr-ds")] == ["main"]


def test_dataset_card_load_edit_push_and_validate(hub_server: HubTestServer, tmp_path) -> None:
    hub_server.seed("test-org/card-ds", {"README.md": README, "data/train-00000.parquet": parquet_bytes(id=[1])})
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi

        card = DatasetCard.load("test-org/card-ds")
        card.data["tags"] = ["curate"]
        card.text += "\\nMore words.\\n"
        card.push_to_hub("test-org/card-ds", commit_message="Update card")

        errors = {}
        try:
            DatasetCard("---\\nconfigs:\\n- data_files: data/*.parquet\\n---\\n").validate()
        except ValueError as err:
            errors["validate"] = str(err)
        try:
            HfApi().create_commit("test-org/card-ds", [CommitOperationAdd("README.md", b"---\\nconfigs: 3\\n---\\n")],
                                  commit_message="Break card", repo_type="dataset")
        except ValueError as err:
            errors["commit"] = str(err)
        print(json.dumps(errors))
        """,
    )
    assert result["validate"] == '"configs[0]".config_name must be a non-empty string'
    assert '"configs" must be a list' in result["commit"]
    assert [c.title for c in hub_server.commits("test-org/card-ds")][-1] == "Update card"
    pushed = hub_server.files("test-org/card-ds")["README.md"].decode()
    assert "- curate" in pushed and "More words." in pushed
    assert "config_name: traces" in pushed  # the edit kept the configs already on the Hub


def test_unchanged_files_make_no_commit(hub_server: HubTestServer, tmp_path) -> None:
    """huggingface_hub drops files whose preupload `oid` matches, and skips empty commits."""
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo("test-org/same", repo_type="dataset")
        kwargs = dict(repo_id="test-org/same", repo_type="dataset")
        first = api.upload_file(path_or_fileobj=b"PAR1" + bytes(100), path_in_repo="a.parquet", **kwargs)
        again = api.upload_file(path_or_fileobj=b"PAR1" + bytes(100), path_in_repo="a.parquet", **kwargs)
        text = api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", **kwargs)
        text_again = api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", **kwargs)
        print(json.dumps([first.oid, again.oid, text.oid, text_again.oid]))
        """,
    )
    first, again, text, text_again = result
    assert first == again and text == text_again and first != text
    assert len(hub_server.commits("test-org/same")) == 3  # initial + one per distinct upload


def test_gitignore_skips_files(hub_server: HubTestServer, tmp_path) -> None:
    """A committed .gitignore makes the Hub answer `shouldIgnore`, and the client drops those files."""
    hub_server.seed("test-org/ignore", {".gitignore": "*.log\ncache/\n"})
    run_hub_client(
        hub_server,
        tmp_path,
        """
        from huggingface_hub import CommitOperationAdd, HfApi

        ops = [CommitOperationAdd(p, b"x") for p in ("run.log", "cache/a.txt", "keep.txt", "logs/cache.txt")]
        HfApi().create_commit("test-org/ignore", ops, commit_message="Add", repo_type="dataset")
        """,
    )
    assert sorted(hub_server.files("test-org/ignore")) == [".gitattributes", ".gitignore", "keep.txt", "logs/cache.txt"]


def test_parent_commit_conflict(hub_server: HubTestServer, tmp_path) -> None:
    old = hub_server.seed("test-org/race", {"a.txt": "one"})
    hub_server.seed("test-org/race", {"a.txt": "two"})
    result = run_hub_client(
        hub_server,
        tmp_path,
        f"""
        import json
        from huggingface_hub import CommitOperationAdd, HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            HfApi().create_commit("test-org/race", [CommitOperationAdd("a.txt", b"three")], commit_message="late",
                                  repo_type="dataset", parent_commit="{old}")
            print(json.dumps(None))
        except HfHubHTTPError as err:
            print(json.dumps(err.response.status_code))
        """,
    )
    assert result == 412
    assert hub_server.files("test-org/race")["a.txt"] == b"two"


def test_errors_map_to_hub_exceptions(hub_server: HubTestServer, tmp_path) -> None:
    hub_server.seed("test-org/errs", {"a.txt": "x"})
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from huggingface_hub import hf_hub_download, HfApi

        out = {}
        for name, kwargs in {
            "repo": dict(repo_id="test-org/nope", filename="a.txt"),
            "revision": dict(repo_id="test-org/errs", filename="a.txt", revision="no-such-branch"),
            "entry": dict(repo_id="test-org/errs", filename="missing.txt"),
        }.items():
            try:
                hf_hub_download(repo_type="dataset", **kwargs)
            except Exception as err:
                out[name] = type(err).__name__
        api = HfApi()
        out["file_exists"] = [api.file_exists("test-org/errs", f, repo_type="dataset") for f in ("a.txt", "b.txt")]
        print(json.dumps(out))
        """,
    )
    assert result == {
        "repo": "RepositoryNotFoundError",
        "revision": "RevisionNotFoundError",
        "entry": "RemoteEntryNotFoundError",
        "file_exists": [True, False],
    }


def test_branches_tags_history_and_deletions(hub_server: HubTestServer, tmp_path) -> None:
    hub_server.seed("test-org/hist", {"keep.txt": "k", "old/a.txt": "a", "old/b.txt": "b", "gone.txt": "g"})
    result = run_hub_client(
        hub_server,
        tmp_path,
        """
        import json
        from huggingface_hub import CommitOperationDelete, HfApi

        api = HfApi()
        kw = dict(repo_id="test-org/hist", repo_type="dataset")
        api.create_branch(branch="dev", **kw)
        api.create_branch(branch="dev", exist_ok=True, **kw)
        api.upload_file(path_or_fileobj=b"d", path_in_repo="dev.txt", revision="dev", **kw)
        api.create_commit(operations=[CommitOperationDelete("old/"), CommitOperationDelete("gone.txt")],
                          commit_message="Clean up", **kw)
        api.create_tag(tag="v1", **kw)
        api.create_branch(branch="scratch", **kw)
        api.delete_branch(branch="scratch", **kw)
        refs = api.list_repo_refs(**kw)
        commits = api.list_repo_commits(**kw)
        tree = api.list_repo_tree(expand=True, **kw)
        print(json.dumps({
            "branches": sorted(b.name for b in refs.branches),
            "tags": [t.name for t in refs.tags],
            "titles": [c.title for c in commits],
            "main": api.list_repo_files(**kw),
            "dev": sorted(api.list_repo_files(revision="dev", **kw)),
            "v1": api.list_repo_files(revision="v1", **kw),
            "last_commits": {e.path: e.last_commit.title for e in tree},
        }))
        """,
    )
    assert result["branches"] == ["dev", "main"]
    assert result["tags"] == ["v1"]
    assert result["titles"] == ["Clean up", "Seed files", "initial commit"]  # newest first, as the Hub
    assert result["main"] == [".gitattributes", "keep.txt"] == result["v1"]
    assert result["dev"] == [".gitattributes", "dev.txt", "gone.txt", "keep.txt", "old/a.txt", "old/b.txt"]
    assert result["last_commits"] == {".gitattributes": "initial commit", "keep.txt": "Seed files"}


def test_multipart_upload_and_tree_pagination(tmp_path) -> None:
    with HubTestServer(lfs_multipart_chunk_size=1000, tree_page_size=2) as hub:
        payload = bytes(range(256)) * 14  # 3584 bytes of binary: LFS, in 4 parts
        (tmp_path / "blob.bin").write_bytes(payload)
        result = run_hub_client(
            hub,
            tmp_path,
            """
            import json
            from huggingface_hub import CommitOperationAdd, HfApi

            api = HfApi()
            api.create_repo("test-org/big", repo_type="dataset")
            ops = [CommitOperationAdd("blob.bin", "blob.bin")]
            ops += [CommitOperationAdd(f"shards/{i}.txt", str(i).encode()) for i in range(5)]
            api.create_commit("test-org/big", ops, commit_message="Many files", repo_type="dataset")
            print(json.dumps(api.list_repo_files("test-org/big", repo_type="dataset")))
            """,
        )
        assert len(result) == 7  # .gitattributes, blob.bin, 5 shards, across 4 pages of 2 entries
        assert hub.files("test-org/big")["blob.bin"] == payload
        log = hub.request_log
        assert sum(1 for r in log if r.method == "PUT" and "/part/" in r.path) == 4
        assert sum(1 for r in log if "/tree/" in r.path) == 4
        assert not hub.server_errors


# --------------------------------------------------------------------------------------
# datasets against the server


def test_load_dataset_with_configs_block(hub_server: HubTestServer, tmp_path) -> None:
    write_dataset_folder(tmp_path / "run")
    run_hub_client(
        hub_server,
        tmp_path,
        """
        from huggingface_hub import HfApi
        HfApi().create_repo("test-org/loadable", repo_type="dataset")
        HfApi().upload_folder(folder_path="run", repo_id="test-org/loadable", repo_type="dataset")
        """,
    )
    # Another process with its own empty cache, as a user elsewhere would load it.
    reader = tmp_path / "reader"
    reader.mkdir()
    result = run_hub_client(
        hub_server,
        reader,
        """
        import json
        import datasets

        train = datasets.load_dataset("test-org/loadable", split="train")
        test = datasets.load_dataset("test-org/loadable", split="test")
        traces = datasets.load_dataset("test-org/loadable", "traces", split="train")
        streamed = list(datasets.load_dataset("test-org/loadable", split="train", streaming=True))
        print(json.dumps({"train": train.to_dict(), "test": test.num_rows, "traces": traces.column_names,
                          "streamed": [row["answer"] for row in streamed]}))
        """,
        token=None,  # public repo: loading needs no token
    )
    assert result == {
        "train": {"id": [1, 2, 3], "answer": ["up", "down", "none"]},
        "test": 1,
        "traces": ["id", "text"],
        "streamed": ["up", "down", "none"],
    }


# --------------------------------------------------------------------------------------
# Protocol checks with a raw HTTP client


def ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_commit_rejects_what_belongs_in_lfs() -> None:
    with HubTestServer() as hub:
        hub.seed("test-org/raw", {})
        commit_url = f"{hub.url}/api/datasets/test-org/raw/commit/main"
        header = {"key": "header", "value": {"summary": "raw"}}
        as_regular = {
            "key": "file",
            "value": {"path": "x.parquet", "content": base64.b64encode(b"PAR1").decode(), "encoding": "base64"},
        }
        response = httpx.post(commit_url, content=ndjson(header, as_regular), headers=AUTH)
        assert response.status_code == 400 and "tracked by LFS" in response.json()["error"]

        never_uploaded = {"key": "lfsFile", "value": {"path": "y.bin", "algo": "sha256", "oid": "0" * 64}}
        response = httpx.post(commit_url, content=ndjson(header, never_uploaded), headers=AUTH)
        assert response.status_code == 422

        clash = {"key": "file", "value": {"path": "x.txt/y.txt", "content": ""}}
        at_x = {"key": "file", "value": {"path": "x.txt", "content": ""}}
        response = httpx.post(commit_url, content=ndjson(header, at_x, clash), headers=AUTH)
        assert response.status_code == 400 and "both a file and a folder" in response.json()["error"]

        anonymous = httpx.post(commit_url, content=ndjson(header), headers={})
        assert anonymous.status_code == 401
        assert len(hub.commits("test-org/raw")) == 2  # initial + seed: nothing got in


def test_lfs_upload_checks_hash_and_signature() -> None:
    with HubTestServer() as hub:
        hub.seed("test-org/lfs", {})
        data = b"\0binary payload"
        oid = hashlib.sha256(data).hexdigest()
        batch = httpx.post(
            f"{hub.url}/datasets/test-org/lfs.git/info/lfs/objects/batch",
            json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]},
            headers=AUTH,
        ).json()
        href = batch["objects"][0]["actions"]["upload"]["href"]
        assert httpx.put(href, content=b"\0tampered payload").status_code == 400
        assert httpx.put(href.replace("sig=", "sig=0"), content=data).status_code == 403
        assert httpx.put(href, content=data).status_code == 200
        again = httpx.post(
            f"{hub.url}/datasets/test-org/lfs.git/info/lfs/objects/batch",
            json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
            headers=AUTH,
        ).json()
        assert "actions" not in again["objects"][0]  # already stored: nothing to upload


def test_resolve_headers_ranges_and_cdn_redirect() -> None:
    with HubTestServer() as hub:
        parquet = parquet_bytes(id=list(range(100)))
        commit = hub.seed("test-org/dl", {"notes.txt": "0123456789", "data.parquet": parquet})
        base = f"{hub.url}/datasets/test-org/dl/resolve"

        head = httpx.head(f"{base}/main/notes.txt")
        assert head.headers["X-Repo-Commit"] == commit
        assert head.headers["ETag"].strip('"') == hashlib.sha1(b"blob 10\x00" + b"0123456789").hexdigest()
        assert head.headers["Content-Length"] == "10"
        ranged = httpx.get(f"{base}/{commit}/notes.txt", headers={"Range": "bytes=2-4"})
        assert (ranged.status_code, ranged.content, ranged.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
        assert httpx.get(f"{base}/main/notes.txt", headers={"Range": "bytes=20-"}).status_code == 416

        lfs = httpx.head(f"{base}/main/data.parquet")
        assert lfs.status_code == 302
        assert lfs.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(parquet).hexdigest()
        assert lfs.headers["X-Linked-Size"] == str(len(parquet))
        location = lfs.headers["Location"]
        assert not location.startswith(hub.url)  # another origin, as the Hub's CDN
        assert httpx.get(location).content == parquet
        assert httpx.get(location.split("?")[0]).status_code == 403  # unsigned

        missing = httpx.head(f"{base}/main/nope.txt")
        assert (missing.status_code, missing.headers["X-Error-Code"]) == (404, "EntryNotFound")
        assert missing.headers["X-Repo-Commit"] == commit
        assert httpx.head(f"{base}/v9/notes.txt").headers["X-Error-Code"] == "RevisionNotFound"
        assert httpx.head(f"{hub.url}/datasets/test-org/x/resolve/main/a").headers["X-Error-Code"] == "RepoNotFound"


@pytest.mark.parametrize("revision", ["refs%2Fpr%2F1", "refs/pr/1"])
def test_pr_refs_quoted_or_not(revision: str) -> None:
    """Clients quote special refs, except HfFileSystem; the Hub takes both."""
    with HubTestServer() as hub:
        hub.seed("test-org/refs", {"a.txt": "a"})
        header = {"key": "header", "value": {"summary": "pr"}}
        added = {"key": "file", "value": {"path": "b.txt", "content": base64.b64encode(b"b").decode()}}
        created = httpx.post(
            f"{hub.url}/api/datasets/test-org/refs/commit/main",
            params={"create_pr": "1"},
            content=ndjson(header, added),
            headers=AUTH,
        ).json()
        info = httpx.get(f"{hub.url}/api/datasets/test-org/refs/revision/{revision}").json()
        assert info["sha"] == created["commitOid"]
        tree = httpx.get(f"{hub.url}/api/datasets/test-org/refs/tree/{revision}").json()
        assert [entry["path"] for entry in tree] == [".gitattributes", "a.txt", "b.txt"]
        assert httpx.get(f"{hub.url}/datasets/test-org/refs/resolve/{revision}/b.txt").content == b"b"


def test_validate_yaml_answers() -> None:
    with HubTestServer() as hub:
        ok = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": README, "repoType": "dataset"})
        assert ok.status_code == 200 and ok.json() == {"errors": [], "warnings": []}
        empty = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": "# no metadata", "repoType": "dataset"})
        assert empty.status_code == 200 and empty.json()["warnings"]
        broken = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": "---\nlicense: [mit\n---\n"})
        assert broken.status_code == 400 and "Invalid YAML" in broken.json()["errors"][0]["message"]
        as_text = httpx.post(
            f"{hub.url}/api/validate-yaml", json={"content": "---\n- a\n---\n"}, headers={"Accept": "text/plain"}
        )
        assert (as_text.status_code, as_text.text) == (400, "README.md metadata must be a YAML mapping")
        duplicate = README.replace("config_name: traces", "config_name: default")
        bad = httpx.post(f"{hub.url}/api/validate-yaml", json={"content": duplicate, "repoType": "dataset"})
        assert bad.status_code == 400 and "duplicated" in bad.json()["errors"][0]["message"]
