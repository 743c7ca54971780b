"""A local stand-in for the Hugging Face Hub HTTP API, for tests.

The build machines cannot reach huggingface.co, so everything `curate push` and
`load_dataset("org/name")` do against the Hub is tested against this server instead.
It speaks the subset of the Hub API that `huggingface_hub` 2.x and `datasets` use
(routes, payloads and headers were read from their sources), and behaves like the
Hub where a client could notice:

- repos are versioned: every commit is an immutable snapshot with a 40-hex id, and
  branches, tags and `refs/pr/N` refs point at commits;
- a new repo gets an initial commit holding the Hub's default `.gitattributes`, and
  those LFS rules decide `preupload` answers *and* are enforced on commit, so a client
  that sends a parquet file as a regular file is rejected, as on the Hub;
- LFS objects go through the batch API to a presigned PUT URL and are hash-checked;
- downloads of LFS files answer a 302 to a "CDN" on another origin (a second port),
  so the client's redirect and auth-stripping logic is exercised as on the real Hub;
- errors carry the `X-Error-Code` headers that `huggingface_hub` maps to
  `RepositoryNotFoundError`, `RevisionNotFoundError` and `RemoteEntryNotFoundError`.

Not modelled: Xet storage (clients must run with `HF_HUB_DISABLE_XET=1`), namespace
permissions (any valid token may write to any namespace), gated repos, discussions
beyond the PR refs that `create_pr` opens, merges, and the Hub's full metadata schema
(`/api/validate-yaml` checks YAML syntax and the structure of `configs`).

Tokens: any token starting with `hf_test` is valid; those starting with `hf_test_read`
are read-only. State lives in memory, in the server object.

Routes ({type} is models, datasets or spaces; {prefix} is "" for models, datasets/ or
spaces/; {rev} is a branch, tag, commit id or refs/pr/N, quoted or not):

    GET    /api/whoami-v2
    POST   /api/repos/create                      DELETE /api/repos/delete
    PUT    /api/{type}/{id}/settings              POST   /api/validate-yaml
    GET    /api/{type}/{id}                       GET    /api/{type}/{id}/revision/{rev}
    GET    /api/{type}/{id}/tree/{rev}[/{path}]   POST   /api/{type}/{id}/paths-info/{rev}
    POST   /api/{type}/{id}/preupload/{rev}       POST   /api/{type}/{id}/commit/{rev}
    GET    /api/{type}/{id}/refs                  GET    /api/{type}/{id}/commits/{rev}
    POST   /api/{type}/{id}/branch/{branch}       DELETE /api/{type}/{id}/branch/{branch}
    POST   /api/{type}/{id}/tag/{rev}
    POST   /{prefix}{id}.git/info/lfs/objects/batch   (+ /verify)
    GET    /{prefix}{id}/resolve/{rev}/{path}     HEAD   the same
    and the presigned URLs it hands out: PUT /_test-lfs/... (single and multipart
    parts, POST to complete), GET /_test-cdn/... on the second port.

A commit with no operations is accepted and recorded, as git allows; huggingface_hub
never sends one (it drops unchanged files using the `oid` that preupload returns, and
when nothing is left it returns the current head without calling /commit).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import yaml
from aiohttp import web

REPO_TYPES = ("model", "dataset", "space")
# URL prefix of each repo type in non-API routes (resolve, LFS): models have none.
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DEFAULT_BRANCH = "main"

# The Hub refuses regular (non-LFS) files above 10 MB.
REGULAR_FILE_MAX_BYTES = 10 * 1024 * 1024
# Git's binary heuristic: a NUL byte in the first 8000 bytes. The Hub rejects binary
# files that are not stored with LFS.
BINARY_SNIFF_BYTES = 8000

TREE_PAGE_SIZE = 1000  # the Hub's page size for /tree ...
TREE_PAGE_SIZE_EXPANDED = 50  # ... and with expand=true, which costs it more
COMMITS_PAGE_SIZE = 50

LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
LFS_MEDIA_TYPE = "application/vnd.git-lfs+json"

# What the Hub writes in `.gitattributes` when it creates a repo (abridged to the
# patterns that matter for models and datasets).
DEFAULT_GITATTRIBUTES = "\n".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5",
        "*.joblib", "*.lfs.*", "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy",
        "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth",
        "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz",
        "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
        # audio and images, which dataset repos hold
        "*.flac", "*.mp3", "*.ogg", "*.wav", "*.bmp", "*.gif", "*.jpeg", "*.jpg", "*.png",
        "*.tiff", "*.webp",
    )
) + "\n"

YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
PR_REF = re.compile(r"^refs/pr/(\d+)$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------
# Storage model


def git_blob_oid(data: bytes) -> str:
    """The id git gives a blob, which the Hub reports as a file's `oid` / ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    """The Hub's timestamp format (millisecond precision, Z suffix)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Blob:
    """One file's content as stored in a commit."""

    content: bytes
    is_lfs: bool
    sha256: str = field(init=False)
    oid: str = field(init=False)  # git oid: of the content, or of the LFS pointer

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.content).hexdigest())
        object.__setattr__(
            self, "oid", git_blob_oid(self.pointer if self.is_lfs else self.content)
        )

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def pointer(self) -> bytes:
        return LFS_POINTER_TEMPLATE.format(oid=self.sha256, size=self.size).encode()

    def upload_oid(self) -> str:
        """The oid `huggingface_hub` compares against to skip unchanged files."""
        return self.sha256 if self.is_lfs else git_blob_oid(self.content)


@dataclass(frozen=True)
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: datetime
    files: Mapping[str, Blob]


@dataclass
class PullRequest:
    num: int
    title: str
    base: str  # branch the PR targets
    author: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    mongo_id: str
    space_sdk: str | None = None
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, PullRequest] = field(default_factory=dict)
    pr_heads: dict[int, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.repo_type, self.repo_id)

    def resolve(self, revision: str) -> str | None:
        """Commit id of a branch, tag, `refs/pr/N` or full commit sha; None if unknown."""
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if match := PR_REF.match(revision):
            return self.pr_heads.get(int(match.group(1)))
        if COMMIT_SHA.match(revision) and revision in self.commits:
            return revision
        return None

    def history(self, commit_id: str) -> Iterator[Commit]:
        """Commits from `commit_id` back to the first, newest first."""
        current: str | None = commit_id
        while current is not None:
            commit = self.commits[current]
            yield commit
            current = commit.parent


class HubError(Exception):
    """An error answer, with the headers `huggingface_hub.hf_raise_for_status` reads."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        commit: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.extra = extra or {}

    def to_response(self, method: str) -> web.Response:
        headers = {"X-Error-Message": " ".join(self.message.split())}
        if self.code:
            headers["X-Error-Code"] = self.code
        if self.commit:  # lets clients cache "file absent at this commit"
            headers["X-Repo-Commit"] = self.commit
        if method == "HEAD":
            return web.Response(status=self.status, headers=headers)
        return web.json_response({"error": self.message, **self.extra}, status=self.status, headers=headers)


def repo_not_found(repo_type: str, repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_type}s/{repo_id}", "RepoNotFound")


# --------------------------------------------------------------------------------------
# Repository rules: LFS tracking, gitignore, card metadata


def _gitattributes_pattern_matches(pattern: str, path: str) -> bool:
    # gitattributes: a pattern without a slash matches the basename at any depth;
    # fnmatch's `*` also crosses `/`, which is close enough for `dir/**/*` patterns.
    pattern = pattern.lstrip("/")
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern)


def lfs_tracked(path: str, gitattributes: str) -> bool:
    tracked = False
    for line in gitattributes.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if _gitattributes_pattern_matches(parts[0], path):
            attrs = parts[1:]
            if "filter=lfs" in attrs:
                tracked = True
            elif "-filter" in attrs or "!filter" in attrs:
                tracked = False
    return tracked


def gitignored(path: str, gitignore: str) -> bool:
    """A subset of gitignore matching: globs, anchored patterns, dir/ patterns, negation."""
    ignored = False
    parts = path.split("/")
    for raw in gitignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        dir_only = pattern.endswith("/")
        pattern = pattern.strip("/")
        if "/" in line.rstrip("/").lstrip("!"):  # anchored to the repo root
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes[: len(parts) - dir_only])
        else:
            names = parts[:-1] if dir_only else parts
            hit = any(fnmatch.fnmatchcase(name, pattern) for name in names)
        if hit:
            ignored = not negate
    return ignored


def looks_binary(sample: bytes) -> bool:
    return b"\0" in sample[:BINARY_SNIFF_BYTES]


def upload_mode(files: Mapping[str, Blob], path: str, size: int, sample: bytes) -> str:
    """The Hub's `preupload` answer for a file about to be added to `files`."""
    gitattributes = files[".gitattributes"].content.decode() if ".gitattributes" in files else ""
    if size > REGULAR_FILE_MAX_BYTES or lfs_tracked(path, gitattributes) or looks_binary(sample):
        return "lfs"
    return "regular"


@dataclass
class CardCheck:
    errors: list[str]
    warnings: list[str]
    metadata: dict[str, Any] | None


def check_card(content: str, repo_type: str) -> CardCheck:
    """Validate a README's YAML metadata the way the Hub's /api/validate-yaml does, in part.

    The Hub validates against its full schema (licenses, languages, task ids); this
    checks YAML syntax, that the block is a mapping, and the structure of `configs`,
    which is what `datasets` relies on and what a card editor is most likely to break.
    """
    match = YAML_BLOCK.search(content)
    if match is None:
        return CardCheck([], ["empty or missing yaml metadata in repo card"], None)
    try:
        metadata = yaml.safe_load(match.group(2))
    except yaml.YAMLError as err:
        return CardCheck([f"Invalid YAML in README.md metadata: {err}"], [], None)
    if metadata is None:
        return CardCheck([], ["empty or missing yaml metadata in repo card"], None)
    if not isinstance(metadata, dict):
        return CardCheck(["README.md metadata must be a YAML mapping"], [], None)
    errors: list[str] = []
    for key in ("tags", "license", "language"):
        value = metadata.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            errors.append(f'"{key}" must be a string or a list of strings')
    if "configs" in metadata:
        errors.extend(_check_configs(metadata["configs"]))
    if repo_type == "dataset" and "dataset_info" in metadata:
        info = metadata["dataset_info"]
        if not isinstance(info, (dict, list)):
            errors.append('"dataset_info" must be a mapping or a list of mappings')
    return CardCheck(errors, [], metadata)


def _check_configs(configs: Any) -> list[str]:
    if not isinstance(configs, list):
        return ['"configs" must be a list']
    errors: list[str] = []
    names: set[str] = set()
    defaults = 0
    for i, config in enumerate(configs):
        where = f'"configs[{i}]"'
        if not isinstance(config, dict):
            errors.append(f"{where} must be a mapping")
            continue
        name = config.get("config_name")
        if not isinstance(name, str) or not name:
            errors.append(f'{where}.config_name must be a non-empty string')
        elif name in names:
            errors.append(f'{where}.config_name "{name}" is duplicated')
        else:
            names.add(name)
        if config.get("default") is True:
            defaults += 1
        data_files = config.get("data_files")
        if data_files is not None and not _valid_data_files(data_files):
            errors.append(
                f"{where}.data_files must be a path, a list of paths, or a list of {{split, path}} mappings"
            )
    if defaults > 1:
        errors.append('only one config may set "default: true"')
    return errors


def _valid_data_files(data_files: Any) -> bool:
    def paths(value: Any) -> bool:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

    if paths(data_files):
        return True
    return isinstance(data_files, list) and all(
        isinstance(item, dict) and isinstance(item.get("split"), str) and paths(item.get("path"))
        for item in data_files
    )


# --------------------------------------------------------------------------------------
# The Hub's state and operations, independent of HTTP


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # as sent, percent-encoding kept
    query: str
    status: int


@dataclass(frozen=True)
class User:
    name: str
    can_write: bool


class HubState:
    """All repos, guarded by one lock: handlers run on the server's loop thread while
    tests inspect the state from theirs."""

    def __init__(self, username: str, orgs: Iterable[str]):
        self.username = username
        self.orgs = tuple(orgs)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.RLock()
        self._commit_counter = itertools.count()

    def get_repo(self, repo_type: str, repo_id: str, user: User | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        # Like the Hub, a private repo is indistinguishable from a missing one without access.
        if repo is None or (repo.private and user is None):
            raise repo_not_found(repo_type, repo_id)
        return repo

    def create_repo(
        self, repo_type: str, repo_id: str, *, private: bool, author: str, url: str, space_sdk: str | None = None
    ) -> Repo:
        """`url` is the repo's web URL, which the Hub returns even when the repo exists
        (`create_repo(exist_ok=True)` reads it from the 409 answer)."""
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
        repo = Repo(
            repo_type=repo_type,
            repo_id=repo_id,
            private=private,
            created_at=now_utc(),
            mongo_id=secrets.token_hex(12),
            space_sdk=space_sdk,
        )
        initial = self._new_commit(
            repo, None, {".gitattributes": Blob(DEFAULT_GITATTRIBUTES.encode(), is_lfs=False)},
            title="initial commit", message="", author=author,
        )
        repo.branches[DEFAULT_BRANCH] = initial.id
        self.repos[repo.key] = repo
        return repo

    def _new_commit(
        self, repo: Repo, parent: str | None, files: dict[str, Blob], *, title: str, message: str, author: str
    ) -> Commit:
        # The counter makes ids unique even for two identical empty commits.
        tree = "".join(f"{path}\0{blob.oid}\n" for path, blob in sorted(files.items()))
        seed = f"{parent}\n{title}\n{message}\n{next(self._commit_counter)}\n{tree}"
        commit = Commit(
            id=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            title=title,
            message=message,
            author=author,
            date=now_utc(),
            files=dict(files),
        )
        repo.commits[commit.id] = commit
        return commit

    def commit(
        self,
        repo: Repo,
        revision: str,
        operations: list[dict[str, Any]],
        *,
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> tuple[Commit, int | None]:
        """Apply NDJSON commit operations on top of `revision`; returns (commit, PR number)."""
        pr_num: int | None = None
        if match := PR_REF.match(revision):
            pr_num = int(match.group(1))
            if pr_num not in repo.pr_heads:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.pr_heads[pr_num]
            if create_pr:
                raise HubError(400, "Cannot open a pull request against a pull request ref")
        elif revision in repo.branches:
            head = repo.branches[revision]
        elif repo.resolve(revision) is not None:
            raise HubError(400, f"Cannot commit to {revision}: not a branch")
        else:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if parent_commit is not None and not head.startswith(parent_commit):
            raise HubError(
                412, f"A commit has happened since {parent_commit}. Please refresh and try again."
            )

        files = dict(repo.commits[head].files)
        for op in operations:
            self._apply(repo, files, op)
        folders = {path.rsplit("/", 1)[0] for path in files if "/" in path}
        folders |= {folder.rsplit("/", i)[0] for folder in folders for i in range(1, folder.count("/") + 1)}
        if clashes := sorted(folders & files.keys()):
            raise HubError(400, f"A path cannot be both a file and a folder: {clashes[0]}")
        self._check_regular_files(files, operations)
        touched = {op["value"]["path"] for op in operations}
        if "README.md" in touched and "README.md" in files and not files["README.md"].is_lfs:
            check = check_card(files["README.md"].content.decode("utf-8", "replace"), repo.repo_type)
            if check.errors:
                raise HubError(400, "Invalid metadata in README.md: " + "; ".join(check.errors))

        commit = self._new_commit(repo, head, files, title=title, message=message, author=author)
        if create_pr:
            pr_num = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[pr_num] = PullRequest(pr_num, title, base=revision, author=author)
            repo.pr_heads[pr_num] = commit.id
        elif pr_num is not None:
            repo.pr_heads[pr_num] = commit.id
        else:
            repo.branches[revision] = commit.id
        return commit, (pr_num if create_pr else None)

    @staticmethod
    def _apply(repo: Repo, files: dict[str, Blob], op: dict[str, Any]) -> None:
        key, value = op.get("key"), op.get("value")
        if not isinstance(value, dict):
            raise HubError(400, f"Commit operation {key!r} has no value")
        path = value.get("path")
        if not isinstance(path, str) or not _valid_repo_path(path.rstrip("/") if key == "deletedFolder" else path):
            raise HubError(400, f"Invalid path in commit operation: {path!r}")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')}")
            try:
                content = base64.b64decode(value.get("content", ""), validate=True)
            except binascii.Error:
                raise HubError(400, f"Invalid base64 content for {path}") from None
            files[path] = Blob(content, is_lfs=False)
        elif key == "lfsFile":
            if value.get("algo", "sha256") != "sha256":
                raise HubError(400, f"Unsupported LFS hash algorithm for {path}: {value.get('algo')}")
            oid = value.get("oid", "")
            content = repo.lfs_objects.get(oid)
            if content is None:
                raise HubError(
                    422, f"Your push was rejected because an LFS pointer ({path}) points to an object "
                    f"that was not uploaded: {oid}"
                )
            if value.get("size") is not None and value["size"] != len(content):
                raise HubError(422, f"LFS object {oid} has size {len(content)}, not {value['size']}")
            files[path] = Blob(content, is_lfs=True)
        elif key == "deletedFile":
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            doomed = [p for p in files if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise HubError(400, f"Unknown commit operation: {key!r}")

    @staticmethod
    def _check_regular_files(files: dict[str, Blob], operations: list[dict[str, Any]]) -> None:
        # The Hub refuses, for files added in this commit, what should have gone to LFS.
        gitattributes = files[".gitattributes"].content.decode() if ".gitattributes" in files else ""
        for op in operations:
            if op.get("key") != "file":
                continue
            path = op["value"]["path"]
            blob = files.get(path)
            if blob is None or blob.is_lfs:
                continue
            if blob.size > REGULAR_FILE_MAX_BYTES:
                raise HubError(400, f"Your push was rejected because {path} is larger than 10 MiB; use LFS")
            if lfs_tracked(path, gitattributes):
                raise HubError(
                    400, f"Your push was rejected because {path} is tracked by LFS in .gitattributes "
                    "but was sent as a regular file"
                )
            if looks_binary(blob.content):
                raise HubError(
                    400, f"Your push was rejected because it contains binary files ({path}); use LFS"
                )



def _valid_repo_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts and parts[0] != ".git"


# --------------------------------------------------------------------------------------
# HTTP layer


def _flag(value: str | None) -> bool:
    """Query flags arrive as `true`, `True`, `1` depending on the client."""
    return value is not None and value.lower() in ("1", "true", "yes")


def _take_revision(segments: list[str]) -> tuple[str, list[str]]:
    """Split a revision off raw path segments.

    Clients quote revisions (`refs%2Fpr%2F1`), except HfFileSystem, which sends special
    refs (`refs/pr/1`, `refs/convert/parquet`) unquoted, as the Hub accepts both.
    """
    if not segments:
        raise HubError(400, "Missing revision")
    if unquote(segments[0]) == "refs" and len(segments) >= 3 and segments[1] in ("pr", "convert"):
        return f"refs/{segments[1]}/{unquote(segments[2])}", segments[3:]
    return unquote(segments[0]), segments[1:]


def _join_path(segments: list[str]) -> str:
    # Tree paths arrive as one quoted segment (`data%2Ftrain.parquet`), resolve paths as
    # several: joining before unquoting handles both.
    return unquote("/".join(segments))


class HubApp:
    """Request routing and the Hub's JSON shapes, on top of `HubState`."""

    def __init__(
        self, state: HubState, *, tree_page_size: int | None = None, lfs_multipart_chunk_size: int | None = None
    ):
        self.state = state
        self.tree_page_size = tree_page_size
        self.lfs_multipart_chunk_size = lfs_multipart_chunk_size
        self.url = ""  # set once the sockets are bound
        self.cdn_url = ""
        self.request_log: list[LoggedRequest] = []
        self.server_errors: list[str] = []
        self._secret = secrets.token_bytes(32)
        self._multipart_uploads: dict[tuple[tuple[str, str], str], dict[int, bytes]] = {}

    # ---- plumbing

    def build(self) -> web.Application:
        # LFS uploads and base64 commit payloads are far beyond aiohttp's 1 MiB default.
        app = web.Application(client_max_size=4 * 1024**3, middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except HubError as err:
            response = err.to_response(request.method)
        except Exception as err:
            # A bug in this server, not a Hub answer: keep the traceback for the test
            # fixture to fail on, and answer 500 so the client shows it too.
            with self.state.lock:
                self.server_errors.append(traceback.format_exc())
            response = web.json_response({"error": f"test Hub bug: {type(err).__name__}: {err}"}, status=500)
        with self.state.lock:
            self.request_log.append(
                LoggedRequest(
                    request.method, request.rel_url.raw_path, request.rel_url.raw_query_string, response.status
                )
            )
        return response

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def _check_signature(self, request: web.Request, *parts: str) -> None:
        if not hmac.compare_digest(request.query.get("sig", ""), self._sign(*parts)):
            raise HubError(403, "Invalid or missing signature")

    def _user(self, request: web.Request) -> User | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith("hf_test"):
            # The Hub answers any request carrying a bad token with this exact message,
            # which huggingface_hub uses to tell "bad token" from "no access".
            raise HubError(401, "Invalid credentials in Authorization header")
        return User(self.state.username, can_write=not token.startswith("hf_test_read"))

    def _writer(self, request: web.Request) -> User:
        user = self._user(request)
        if user is None:
            raise HubError(401, "You must be authenticated to do this (no token sent)")
        if not user.can_write:
            raise HubError(403, "You don't have the rights to write with a read token")
        return user

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # The body is read before taking the lock, so that handlers below are plain
        # synchronous functions that never yield to the loop halfway through a change.
        body = await request.read()
        segments = request.rel_url.raw_path.strip("/").split("/")
        method = request.method
        with self.state.lock:
            if segments[0] == "api":
                return self._dispatch_api(request, method, segments[1:], body)
            if segments[0] == "_test-lfs":
                return self._dispatch_lfs_storage(request, method, segments[1:], body)
            if segments[0] == "_test-cdn" and method in ("GET", "HEAD"):
                return self._cdn(request, segments[1:])
            return self._dispatch_repo_url(request, method, segments, body)

    def _dispatch_api(self, request: web.Request, method: str, seg: list[str], body: bytes) -> web.StreamResponse:
        if seg == ["whoami-v2"] and method == "GET":
            return self._whoami(request)
        if seg == ["repos", "create"] and method == "POST":
            return self._create_repo(request, _json(body))
        if seg == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(request, _json(body))
        if seg == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(request, _json(body))
        if len(seg) >= 3 and seg[0].endswith("s") and seg[0][:-1] in REPO_TYPES:
            repo_type, repo_id, rest = seg[0][:-1], f"{unquote(seg[1])}/{unquote(seg[2])}", seg[3:]
            user = self._user(request)
            if not rest and method == "GET":
                return self._repo_info(request, repo_type, repo_id, DEFAULT_BRANCH, user)
            action, args = (rest[0], rest[1:]) if rest else ("", [])
            if action == "revision" and method == "GET":
                return self._repo_info(request, repo_type, repo_id, _take_revision(args)[0], user)
            if action == "tree" and method == "GET":
                revision, path = _take_revision(args)
                return self._tree(request, repo_type, repo_id, revision, _join_path(path), user)
            if action == "paths-info" and method == "POST":
                form = parse_qs(body.decode(), keep_blank_values=True)
                return self._paths_info(repo_type, repo_id, _take_revision(args)[0], form, user)
            if action == "preupload" and method == "POST":
                revision = _take_revision(args)[0]
                return self._preupload(request, repo_type, repo_id, revision, _json(body))
            if action == "commit" and method == "POST":
                revision = _take_revision(args)[0]
                return self._commit(request, repo_type, repo_id, revision, body)
            if action == "refs" and not args and method == "GET":
                return self._refs(request, repo_type, repo_id, user)
            if action == "commits" and method == "GET":
                revision = _take_revision(args or [DEFAULT_BRANCH])[0]
                return self._list_commits(request, repo_type, repo_id, revision, user)
            if action == "branch" and len(args) == 1 and method in ("POST", "DELETE"):
                branch = unquote(args[0])
                if method == "DELETE":
                    return self._delete_branch(request, repo_type, repo_id, branch)
                return self._create_branch(request, repo_type, repo_id, branch, _json(body, default={}))
            if action == "tag" and method == "POST":
                revision = _take_revision(args)[0]
                return self._create_tag(request, repo_type, repo_id, revision, _json(body))
            if action == "settings" and not args and method == "PUT":
                return self._update_settings(request, repo_type, repo_id, _json(body))
        if any("xet" in part for part in seg):
            raise HubError(404, "The test Hub has no Xet storage: run the client with HF_HUB_DISABLE_XET=1")
        raise HubError(404, f"Not implemented by the test Hub: {method} /api/{'/'.join(seg)}")

    def _dispatch_repo_url(
        self, request: web.Request, method: str, seg: list[str], body: bytes
    ) -> web.StreamResponse:
        repo_type = "model"
        if seg and seg[0] in ("datasets", "spaces"):
            repo_type, seg = seg[0][:-1], seg[1:]
        if len(seg) >= 3 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            revision, path = _take_revision(seg[3:])
            repo_id = f"{unquote(seg[0])}/{unquote(seg[1])}"
            return self._resolve(request, repo_type, repo_id, revision, _join_path(path))
        if len(seg) == 6 and seg[1].endswith(".git") and seg[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo_id = f"{unquote(seg[0])}/{unquote(seg[1])[:-4]}"
            if seg[5] == "batch":
                return self._lfs_batch(request, repo_type, repo_id, _json(body))
            if seg[5] == "verify":
                return self._lfs_verify(request, repo_type, repo_id, _json(body))
        raise HubError(404, f"Not implemented by the test Hub: {method} /{'/'.join(seg)}")

    # ---- account and repos

    def _whoami(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            raise HubError(401, "You must be authenticated to call whoami")
        return web.json_response(
            {
                "type": "user",
                "id": hashlib.sha1(user.name.encode()).hexdigest()[:24],
                "name": user.name,
                "fullname": user.name,
                "email": f"{user.name}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "orgs": [
                    {"type": "org", "name": org, "fullname": org, "roleInOrg": "write"} for org in self.state.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {
                        "displayName": "test token",
                        "role": "write" if user.can_write else "read",
                        "createdAt": iso(now_utc()),
                    },
                },
            }
        )

    def _create_repo(self, request: web.Request, payload: dict[str, Any]) -> web.Response:
        user = self._writer(request)
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,96}", name) or "--" in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        namespace = payload.get("organization") or user.name
        if repo_type == "space" and payload.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
            raise HubError(400, "A space needs an sdk")
        private = payload.get("visibility", "private" if payload.get("private") else "public") != "public"
        repo_id = f"{namespace}/{name}"
        repo = self.state.create_repo(
            repo_type, repo_id, private=private, author=user.name, url=self.repo_url(repo_type, repo_id),
            space_sdk=payload.get("sdk"),
        )
        return web.json_response({"url": self.repo_url(repo_type, repo_id), "name": repo_id, "id": repo.mongo_id})

    def _delete_repo(self, request: web.Request, payload: dict[str, Any]) -> web.Response:
        user = self._writer(request)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user.name}/{payload.get('name')}"
        self.state.get_repo(repo_type, repo_id, user)
        del self.state.repos[(repo_type, repo_id)]
        return web.Response(status=200)

    def _update_settings(self, request: web.Request, repo_type: str, repo_id: str, payload: dict) -> web.Response:
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        if "visibility" in payload:
            repo.private = payload["visibility"] != "public"
        elif "private" in payload:
            repo.private = bool(payload["private"])
        return web.json_response({})

    def _repo_info(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str, user: User | None
    ) -> web.Response:
        repo = self.state.get_repo(repo_type, repo_id, user)
        commit_id = repo.resolve(revision)
        if commit_id is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        commit = repo.commits[commit_id]
        with_blobs = _flag(request.query.get("blobs"))
        card = self._card_data(commit, repo_type)
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=blob.size, blobId=blob.oid)
                if blob.is_lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.mongo_id,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.id,
            "lastModified": iso(commit.date),
            "createdAt": iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": self._tags(card, repo_type),
            "siblings": siblings,
            "usedStorage": sum(len(data) for data in repo.lfs_objects.values()),
        }
        if card is not None:
            info["cardData"] = card
        if repo_type == "model":
            info["modelId"] = repo.repo_id
            if card:
                info["library_name"] = card.get("library_name")
                info["pipeline_tag"] = card.get("pipeline_tag")
        if repo_type == "dataset":
            info["description"] = None
            info["citation"] = None
        if repo_type == "space":
            info["sdk"] = repo.space_sdk
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if expand:  # the Hub then answers only the asked-for properties
            info = {k: v for k, v in info.items() if k in expand or k in ("_id", "id")}
        return web.json_response(info)

    @staticmethod
    def _card_data(commit: Commit, repo_type: str) -> dict[str, Any] | None:
        readme = commit.files.get("README.md")
        if readme is None or readme.is_lfs:
            return None
        return check_card(readme.content.decode("utf-8", "replace"), repo_type).metadata

    @staticmethod
    def _tags(card: dict[str, Any] | None, repo_type: str) -> list[str]:
        if not card:
            return []
        tags: list[str] = []
        for key, prefix in (("tags", ""), ("license", "license:"), ("language", "language:")):
            values = card.get(key) or []
            tags.extend(prefix + v for v in ([values] if isinstance(values, str) else values) if isinstance(v, str))
        if repo_type == "dataset":
            for category in card.get("task_categories") or []:
                tags.append(f"task_categories:{category}")
        return tags

    # ---- files: tree, paths-info, resolve

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit_id = repo.resolve(revision)
        if commit_id is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[commit_id]

    def _entries(self, commit: Commit, path: str, recursive: bool) -> list[tuple[str, Blob | None]]:
        """(path, blob) for files and (path, None) for folders under `path`, sorted."""
        prefix = path + "/" if path else ""
        entries: dict[str, Blob | None] = {}
        for file_path, blob in commit.files.items():
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):
                entries[prefix + "/".join(parts[:i])] = None
            if recursive or len(parts) == 1:
                entries[file_path] = blob
        return sorted(entries.items())

    def _entry_json(self, repo: Repo, commit: Commit, path: str, blob: Blob | None, expand: bool) -> dict[str, Any]:
        if blob is None:
            folder = {p: b.oid for p, b in commit.files.items() if p.startswith(path + "/")}
            oid = hashlib.sha1(json.dumps(sorted(folder.items())).encode()).hexdigest()
            entry: dict[str, Any] = {"type": "directory", "oid": oid, "size": 0, "path": path}
        else:
            entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.is_lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        if expand:
            last = self._last_commit_touching(repo, commit, path, is_folder=blob is None)
            entry["lastCommit"] = {"id": last.id, "title": last.title, "date": iso(last.date)}
        return entry

    @staticmethod
    def _last_commit_touching(repo: Repo, commit: Commit, path: str, *, is_folder: bool) -> Commit:
        def state(c: Commit) -> Any:
            if is_folder:
                return sorted((p, b.oid) for p, b in c.files.items() if p.startswith(path + "/"))
            blob = c.files.get(path)
            return blob.oid if blob else None

        here = state(commit)
        last = commit
        for older in itertools.islice(repo.history(commit.id), 1, None):
            if state(older) != here:
                break
            last = older
        return last

    def _tree(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str, path: str, user: User | None
    ) -> web.Response:
        repo = self.state.get_repo(repo_type, repo_id, user)
        commit = self._commit_at(repo, revision)
        path = path.strip("/")
        if path and not any(p.startswith(path + "/") for p in commit.files):
            raise HubError(404, f"Path {path} is not a folder at {revision}", "EntryNotFound", commit.id)
        recursive, expand = _flag(request.query.get("recursive")), _flag(request.query.get("expand"))
        entries = self._entries(commit, path, recursive)
        page_size = self.tree_page_size or (TREE_PAGE_SIZE_EXPANDED if expand else TREE_PAGE_SIZE)
        cursor = request.query.get("cursor", "0")
        if not cursor.isdigit():
            raise HubError(400, f"Invalid cursor: {cursor!r}")
        start = int(cursor)
        page = entries[start: start + page_size]
        headers = {}
        if start + page_size < len(entries):
            # The Hub paginates with a cursor and a GitHub-style Link header.
            query = dict(request.query)
            query["cursor"] = str(start + page_size)
            headers["Link"] = f'<{self.url}{request.rel_url.raw_path}?{urlencode(query)}>; rel="next"'
        body = [self._entry_json(repo, commit, p, b, expand) for p, b in page]
        return web.json_response(body, headers=headers)

    def _paths_info(
        self, repo_type: str, repo_id: str, revision: str, form: Mapping[str, list[str]], user: User | None
    ) -> web.Response:
        repo = self.state.get_repo(repo_type, repo_id, user)
        commit = self._commit_at(repo, revision)
        expand = _flag((form.get("expand") or [None])[-1])
        out = []
        for raw in form.get("paths", []):
            path = raw.strip("/")
            if path in commit.files:
                out.append(self._entry_json(repo, commit, path, commit.files[path], expand))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(self._entry_json(repo, commit, path, None, expand))
            # absent paths are left out, as the Hub does
        return web.json_response(out)

    def _resolve(self, request: web.Request, repo_type: str, repo_id: str, revision: str, path: str):
        repo = self.state.get_repo(repo_type, repo_id, self._user(request))
        commit = self._commit_at(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.id)
        headers = {"X-Repo-Commit": commit.id, "Accept-Ranges": "bytes"}
        if blob.is_lfs:
            # Like the Hub: a redirect to storage on another origin, which carries the
            # real size and sha256 in X-Linked-* headers. Being cross-origin, the client
            # stops following on HEAD and drops its token on GET, so the URL is signed.
            cdn_path = f"{repo_type}s/{repo_id}/{blob.sha256}"
            location = f"{self.cdn_url}/_test-cdn/{quote(cdn_path)}?{urlencode({'sig': self._sign('cdn', cdn_path)})}"
            headers.update(
                {
                    "Location": location,
                    "ETag": f'"{blob.oid}"',
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": str(blob.size),
                }
            )
            return web.Response(status=302, headers=headers)
        headers["ETag"] = f'"{blob.oid}"'
        return _content_response(request, blob.content, headers)

    def _cdn(self, request: web.Request, seg: list[str]) -> web.StreamResponse:
        cdn_path = _join_path(seg)
        self._check_signature(request, "cdn", cdn_path)
        type_plural, namespace, name, sha256 = cdn_path.split("/")
        repo = self.state.repos.get((type_plural[:-1], f"{namespace}/{name}"))
        if repo is None or sha256 not in repo.lfs_objects:
            raise HubError(404, "Object not found")
        return _content_response(request, repo.lfs_objects[sha256], {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})

    # ---- uploads: preupload, LFS, commit

    def _preupload(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str, payload: dict[str, Any]
    ) -> web.Response:
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        commit = self._commit_at(repo, revision)
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in commit.files:
            gitignore = commit.files[".gitignore"].content.decode("utf-8", "replace")
        answers = []
        for item in payload.get("files", []):
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int):
                raise HubError(400, f"Each preupload file needs a path and a size, got {item!r}")
            sample = base64.b64decode(item.get("sample", ""))
            mode = upload_mode(commit.files, path, size, sample)
            existing = commit.files.get(path)
            answer = {
                "path": path,
                "uploadMode": mode,
                "shouldIgnore": bool(gitignore) and gitignored(path, gitignore),
                # the oid lets the client skip files that did not change
                "oid": existing.upload_oid() if existing and existing.is_lfs == (mode == "lfs") else None,
            }
            answers.append(answer)
        return web.json_response({"files": answers, "commitOid": commit.id})

    def _lfs_batch(self, request: web.Request, repo_type: str, repo_id: str, payload: dict) -> web.Response:
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        operation = payload.get("operation")
        if operation != "upload":  # huggingface_hub only uploads through the batch API
            raise HubError(400, f"Unsupported LFS operation: {operation!r}")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "Only sha256 is supported")
        ref = (payload.get("ref") or {}).get("name")
        if ref is not None and repo.resolve(ref) is None:
            raise HubError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid", ""), obj.get("size")
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not SHA256_HEX.match(oid) or not isinstance(size, int) or size < 0:
                answer["error"] = {"code": 422, "message": "Invalid oid or size"}
                answer["size"] = size if isinstance(size, int) else 0
            elif oid not in repo.lfs_objects:  # already stored objects get no actions
                answer["actions"] = self._upload_actions(repo, oid, size)
            objects.append(answer)
        return web.json_response({"transfer": "basic", "objects": objects}, content_type=LFS_MEDIA_TYPE)

    def _upload_actions(self, repo: Repo, oid: str, size: int) -> dict[str, Any]:
        base = f"{self.url}/_test-lfs/{repo.repo_type}/{repo.repo_id}/{oid}"
        sig = self._sign("upload", repo.repo_type, repo.repo_id, oid, str(size))
        upload: dict[str, Any] = {"href": f"{base}?size={size}&sig={sig}"}
        chunk = self.lfs_multipart_chunk_size
        if chunk and size > chunk:
            # The Hub's multipart flavour: one presigned URL per part in the header,
            # the href then receives the completion call.
            parts = -(-size // chunk)
            upload["header"] = {"chunk_size": str(chunk)}
            for n in range(1, parts + 1):
                part_sig = self._sign("part", repo.repo_type, repo.repo_id, oid, str(size), str(n))
                upload["header"][f"{n:05d}"] = f"{base}/part/{n}?size={size}&sig={part_sig}"
        verify_href = f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}.git/info/lfs/objects/verify"
        return {"upload": upload, "verify": {"href": verify_href}}

    def _dispatch_lfs_storage(
        self, request: web.Request, method: str, seg: list[str], body: bytes
    ) -> web.StreamResponse:
        # /_test-lfs/{type}/{namespace}/{name}/{oid}[/part/{n}]: presigned, no token needed
        if len(seg) not in (4, 6):
            raise HubError(404, "Unknown storage URL")
        repo_type, repo_id, oid = seg[0], f"{unquote(seg[1])}/{unquote(seg[2])}", seg[3]
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Unknown storage URL")
        size = request.query.get("size", "")
        key = (repo.key, oid)
        if len(seg) == 6 and seg[4] == "part" and method == "PUT":
            self._check_signature(request, "part", repo_type, repo_id, oid, size, seg[5])
            self._multipart_uploads.setdefault(key, {})[int(seg[5])] = body
            return web.Response(status=200, headers={"ETag": f'"{_part_etag(body)}"'})
        self._check_signature(request, "upload", repo_type, repo_id, oid, size)
        if method == "PUT":
            self._store_lfs_object(repo, oid, int(size), body)
            return web.Response(status=200)
        if method == "POST":  # multipart completion
            uploaded = self._multipart_uploads.pop(key, {})
            try:
                announced = {int(p["partNumber"]): str(p["etag"]).strip('"') for p in _json(body)["parts"]}
            except (KeyError, TypeError, ValueError):
                raise HubError(400, "Multipart completion needs parts: [{partNumber, etag}]") from None
            if sorted(announced) != sorted(uploaded):
                raise HubError(400, f"Completion names parts {sorted(announced)}, uploaded {sorted(uploaded)}")
            for number, etag in announced.items():
                if etag != _part_etag(uploaded[number]):
                    raise HubError(400, f"Wrong etag for part {number}")
            self._store_lfs_object(repo, oid, int(size), b"".join(uploaded[n] for n in sorted(uploaded)))
            return web.json_response({})
        raise HubError(405, f"{method} not allowed on storage URLs")

    @staticmethod
    def _store_lfs_object(repo: Repo, oid: str, size: int, data: bytes) -> None:
        if len(data) != size:
            raise HubError(400, f"Uploaded {len(data)} bytes, announced {size}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not hash to {oid}")
        repo.lfs_objects[oid] = data

    def _lfs_verify(self, request: web.Request, repo_type: str, repo_id: str, payload: dict) -> web.Response:
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        data = repo.lfs_objects.get(payload.get("oid", ""))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        return web.json_response({"success": True})

    def _commit(self, request: web.Request, repo_type: str, repo_id: str, revision: str, body: bytes):
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "The commit payload is not valid NDJSON") from None
        if not lines or not all(isinstance(line, dict) for line in lines) or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0].get("value") or {}
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "The commit summary can't be empty")
        create_pr = _flag(request.query.get("create_pr"))
        commit, pr_num = self.state.commit(
            repo, revision, lines[1:],
            title=title, message=header.get("description") or "", author=user.name,
            parent_commit=header.get("parentCommit"), create_pr=create_pr,
        )
        repo_url = self.repo_url(repo.repo_type, repo.repo_id)
        return web.json_response(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{repo_url}/commit/{commit.id}",
                "pullRequestUrl": f"{repo_url}/discussions/{pr_num}" if pr_num is not None else None,
                "hookOutput": "",
            }
        )

    # ---- refs and history

    def _refs(self, request: web.Request, repo_type: str, repo_id: str, user: User | None) -> web.Response:
        repo = self.state.get_repo(repo_type, repo_id, user)
        body: dict[str, Any] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo.tags.items()],
            "converts": [],
        }
        if _flag(request.query.get("include_prs")):
            body["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c} for n, c in repo.pr_heads.items()
            ]
        return web.json_response(body)

    def _list_commits(
        self, request: web.Request, repo_type: str, repo_id: str, revision: str, user: User | None
    ) -> web.Response:
        repo = self.state.get_repo(repo_type, repo_id, user)
        commit = self._commit_at(repo, revision)
        history = list(repo.history(commit.id))
        page_number = request.query.get("p", "0")
        if not page_number.isdigit():
            raise HubError(400, f"Invalid page: {page_number!r}")
        start = int(page_number) * COMMITS_PAGE_SIZE
        page = history[start: start + COMMITS_PAGE_SIZE]
        headers = {}
        if start + COMMITS_PAGE_SIZE < len(history):
            query = dict(request.query)
            query["p"] = str(start // COMMITS_PAGE_SIZE + 1)
            headers["Link"] = f'<{self.url}{request.rel_url.raw_path}?{urlencode(query)}>; rel="next"'
        body = [
            {
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "authors": [{"user": c.author, "avatar": None}],
                "date": iso(c.date),
                "formatted": {"title": c.title, "message": c.message},
            }
            for c in page
        ]
        return web.json_response(body, headers=headers)

    def _create_branch(self, request: web.Request, repo_type: str, repo_id: str, branch: str, payload: dict):
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        if PR_REF.match(branch) or not re.fullmatch(r"[\w.\-/]+", branch) or branch.startswith("refs/"):
            raise HubError(400, f"Invalid branch name: {branch}")
        start = payload.get("startingPoint") or DEFAULT_BRANCH
        repo.branches[branch] = self._commit_at(repo, start).id
        return web.json_response({})

    def _delete_branch(self, request: web.Request, repo_type: str, repo_id: str, branch: str) -> web.Response:
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        if branch == DEFAULT_BRANCH:
            raise HubError(403, "Cannot delete the default branch")
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return web.json_response({})

    def _create_tag(self, request: web.Request, repo_type: str, repo_id: str, revision: str, payload: dict):
        user = self._writer(request)
        repo = self.state.get_repo(repo_type, repo_id, user)
        tag = payload.get("tag")
        if not isinstance(tag, str) or not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = self._commit_at(repo, revision).id
        return web.json_response({})

    # ---- card validation

    def _validate_yaml(self, request: web.Request, payload: dict[str, Any]) -> web.Response:
        check = check_card(payload.get("content") or "", payload.get("repoType") or "model")
        status = 400 if check.errors else 200
        # RepoCard.validate asks for text/plain and shows the body of a 400 as is;
        # HfApi's pre-commit check reads {"errors": [...], "warnings": [...]}.
        if check.errors and "text/plain" in request.headers.get("Accept", ""):
            return web.Response(status=status, text="\n".join(check.errors))
        return web.json_response(
            {"errors": [{"message": m} for m in check.errors], "warnings": [{"message": m} for m in check.warnings]},
            status=status,
        )


def _part_etag(data: bytes) -> str:
    # S3 answers each part with the MD5 of its bytes as ETag.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _json(body: bytes, default: Any = None) -> Any:
    if not body.strip() and default is not None:
        return default
    try:
        return json.loads(body)
    except ValueError:
        raise HubError(400, "The request body is not valid JSON") from None


def _content_response(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    """200 with the whole content, or 206 for a single `Range: bytes=...`, as the Hub serves files."""
    range_header = request.headers.get("Range")
    if range_header is None:
        return web.Response(body=data, headers=headers, content_type="application/octet-stream")
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
    size = len(data)
    if match is None or match.groups() == ("", ""):
        raise HubError(416, f"Unsupported range: {range_header}")
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    return web.Response(
        status=206,
        body=data[start: end + 1],
        headers={**headers, "Content-Range": f"bytes {start}-{end}/{size}"},
        content_type="application/octet-stream",
    )


# --------------------------------------------------------------------------------------
# The test server


class HubTestServer:
    """A Hub API server on 127.0.0.1, run in a background thread with its own event loop.

        with HubTestServer() as hub:
            env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_test_token"}
            ...  # run client code with that environment
            assert "README.md" in hub.files("org/name", "dataset")

    `lfs_multipart_chunk_size`: when set, LFS objects larger than it are uploaded with
    the Hub's multipart protocol in chunks of that size. `tree_page_size` overrides the
    Hub's page sizes for `/tree`, to exercise pagination with small repos.
    """

    def __init__(
        self,
        *,
        username: str = "test-user",
        orgs: Iterable[str] = ("test-org",),
        tree_page_size: int | None = None,
        lfs_multipart_chunk_size: int | None = None,
    ):
        self.state = HubState(username, orgs)
        self._app = HubApp(
            self.state, tree_page_size=tree_page_size, lfs_multipart_chunk_size=lfs_multipart_chunk_size
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        if not self._app.url:
            raise RuntimeError("HubTestServer is not started")
        return self._app.url

    def start(self) -> HubTestServer:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._runner = web.AppRunner(self._app.build(), access_log=None)
            await self._runner.setup()
            # Two ports, so that LFS downloads redirect to another origin, as the Hub's CDN is.
            for _ in range(2):
                await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            hub_port, cdn_port = (address[1] for address in self._runner.addresses)
            self._app.url = f"http://127.0.0.1:{hub_port}"
            self._app.cdn_url = f"http://127.0.0.1:{cdn_port}"

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as err:  # surface bind errors in start()
                failure.append(err)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="hub-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=30) or failure:
            self._thread = None
            raise RuntimeError("HubTestServer failed to start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        self._app.url = ""

    def __enter__(self) -> HubTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- inspection and seeding

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every request answered so far, in order."""
        with self.state.lock:
            return list(self._app.request_log)

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of exceptions raised inside the server (its own bugs, answered with 500)."""
        with self.state.lock:
            return list(self._app.server_errors)

    def _repo(self, repo_id: str, repo_type: str) -> Repo:
        with self.state.lock:
            repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the test Hub")
        return repo

    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self.state.lock:
            return (repo_type, repo_id) in self.state.repos

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        return self._repo(repo_id, repo_type).private

    def commits(self, repo_id: str, repo_type: str = "dataset", revision: str = DEFAULT_BRANCH) -> list[Commit]:
        """The history of `revision`, oldest first (the Hub's "initial commit" included)."""
        repo = self._repo(repo_id, repo_type)
        with self.state.lock:
            head = repo.resolve(revision)
            if head is None:
                raise KeyError(f"unknown revision {revision!r} in {repo_id}")
            return list(reversed(list(repo.history(head))))

    def files(self, repo_id: str, repo_type: str = "dataset", revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        """path -> content at `revision` (a branch, tag, `refs/pr/N` or commit id)."""
        return {path: blob.content for path, blob in self.blobs(repo_id, repo_type, revision).items()}

    def blobs(self, repo_id: str, repo_type: str = "dataset", revision: str = DEFAULT_BRANCH) -> dict[str, Blob]:
        """Like `files`, with whether each file is stored with LFS."""
        return dict(self.commits(repo_id, repo_type, revision)[-1].files)

    def refs(self, repo_id: str, repo_type: str = "dataset") -> dict[str, str]:
        """Every ref name (`main`, `v1`, `refs/pr/1`) -> commit id."""
        repo = self._repo(repo_id, repo_type)
        with self.state.lock:
            refs = {**repo.branches, **repo.tags}
            refs.update({f"refs/pr/{n}": c for n, c in repo.pr_heads.items()})
            return refs

    def pull_requests(self, repo_id: str, repo_type: str = "dataset") -> list[PullRequest]:
        repo = self._repo(repo_id, repo_type)
        with self.state.lock:
            return list(repo.pull_requests.values())

    def seed(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        *,
        repo_type: str = "dataset",
        private: bool = False,
        message: str = "Seed files",
    ) -> str:
        """Create the repo if needed and commit `files` to main, bypassing HTTP.

        Files go to LFS by the same rules `preupload` applies. Returns the commit id.
        """
        with self.state.lock:
            repo = self.state.repos.get((repo_type, repo_id))
            if repo is None:
                repo = self.state.create_repo(
                    repo_type, repo_id, private=private, author=self.state.username,
                    url=self._app.repo_url(repo_type, repo_id),
                )
            head_files = repo.commits[repo.branches[DEFAULT_BRANCH]].files
            operations = []
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                if upload_mode(head_files, path, len(data), data[:512]) == "lfs":
                    oid = hashlib.sha256(data).hexdigest()
                    repo.lfs_objects[oid] = data
                    operations.append({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid}})
                else:
                    encoded = base64.b64encode(data).decode()
                    operations.append({"key": "file", "value": {"path": path, "content": encoded}})
            commit, _ = self.state.commit(
                repo, DEFAULT_BRANCH, operations, title=message, message="", author=self.state.username
            )
            return commit.id
