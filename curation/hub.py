"""Hub: publish run folders (or any folder) to the Hugging Face Hub, and fetch recipes shared there.

    curate push runs/quickstart --repo my-lab/quickstart-cocoa          # one commit: data, card, recipe, plots
    curate push runs/quickstart --repo my-lab/quickstart-cocoa --create-pr
    curate run hf://datasets/my-lab/quickstart-cocoa                    # rerun a published dataset's recipe

Shared recipes are named with huggingface_hub's `hf://` URIs, the syntax of `HfFileSystem`:

    hf://datasets/ORG/NAME                    recipe.yaml at the head of main
    hf://datasets/ORG/NAME@REVISION           ... at a branch, tag, commit id or refs/pr/N
    hf://datasets/ORG/NAME@REVISION/PATH      another recipe file in the repo (a folder means PATH/recipe.yaml)

Pushing is one `create_commit` with a `CommitOperationAdd` per file. huggingface_hub drops files
whose content the repo already has (it compares the `oid`s `preupload` returns) and makes no
commit when nothing is left, so pushing the same run twice is a no-op: everything we upload,
the card included, is a pure function of the run folder and the repo's own card.

The token comes from `HF_TOKEN` or the huggingface_hub login, never from a recipe.

Recipes from the Hub are someone else's data. They are parsed without YAML object tags, their
prompts are rendered by a sandboxed template engine, and answers are read with regexes, tags and
labels: no code runs. On top of that, `curation.recipe.remote` (which fetches them) keeps such a
recipe inside its own repo (it may not read local files, write outside the run folder or extend a
local recipe) and stops it from sending an API key from your environment to an endpoint the recipe
names itself.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from curation import run_folder
from curation.run_folder import CARD_FILE, JOURNAL_FILE, RunFolder
from curation.types import CurateError, first_line

log = logging.getLogger(__name__)

# Never uploaded by push_folder, whatever the patterns say.
ALWAYS_IGNORED = [".git/*", "*/.git/*", "*.tmp", "**/__pycache__/*", f"{JOURNAL_FILE}*", ".cache/*"]
TOKEN_HELP = "set HF_TOKEN or run `hf auth login`"


class HubError(CurateError):
    """A push or fetch that cannot go on, with a one-line reason for the user."""


# --------------------------------------------------------------------------- tokens
def require_token(token: str | None = None) -> str:
    """The token to write with: the argument, else `HF_TOKEN`, else the stored login. Never a recipe's."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(f"no Hugging Face token: {TOKEN_HELP} (pushing needs a token with write access)")
    return token


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub's multi-line HTTP errors into one line that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except HubError:
        raise
    except RevisionNotFoundError as exc:
        raise HubError(f"{repo_id}: {first_line(exc)}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{repo_id} not found, or the token cannot see it ({first_line(exc)})") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        reason = {
            401: f"the Hub rejected the token (401): {TOKEN_HELP} with a valid one",
            403: f"the token may not write to {repo_id} (403): use a token with write access to it",
            409: f"conflict on {repo_id} (409): {first_line(exc)}",
            412: f"{repo_id} changed on the Hub during the push (412): run the push again",
        }.get(status)
        raise HubError(reason or f"{repo_id}: {first_line(exc)}") from exc
    except OSError as exc:  # connection refused, DNS, offline mode
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT}: {first_line(exc)}") from exc


# --------------------------------------------------------------------------- pushing
@dataclass
class PushResult:
    repo_id: str
    repo_type: str
    revision: str  # the branch pushed to (or that the pull request targets)
    commit_oid: str  # the new commit, or the unchanged head when nothing changed
    commit_url: str
    pr_url: str | None
    changed: bool  # False: every file was already there, no commit was made
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    private: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.pr_url or self.commit_url

    def describe(self) -> str:
        """One line for the CLI."""
        kind = "" if self.repo_type == "model" else f"{self.repo_type} "
        if not self.changed:
            return f"{kind}{self.repo_id}@{self.revision} already has these files: nothing pushed (head {self.commit_oid[:12]})"
        what = f"{len(self.uploaded)} file(s) changed" + (f", {len(self.unchanged)} unchanged" if self.unchanged else "")
        if self.pr_url:
            return f"opened a pull request on {kind}{self.repo_id} ({what}): {self.pr_url}"
        return f"pushed to {kind}{self.repo_id}@{self.revision} ({what}): {self.commit_url}"


def push_folder(
    folder: str | Path | None,
    repo_id: str,
    repo_type: str = "dataset",
    *,
    allow_patterns: Sequence[str] | None = None,
    ignore_patterns: Sequence[str] | None = None,
    files: Mapping[str, bytes | str | Path] | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    merge_card: bool = True,
    token: str | None = None,
) -> PushResult:
    """Push a folder's files to a Hub repo in one commit; unchanged files are skipped, no change is no commit.

    - `allow_patterns`/`ignore_patterns`: fnmatch patterns on paths relative to `folder` (None: every
      file); `ALWAYS_IGNORED` (.git, *.tmp, journals, caches) is never pushed.
    - `files`: path in repo -> content (bytes, text or a local Path), added to or replacing the folder's.
    - The repo is created if missing (`private` applies only then; an existing repo keeps its
      visibility). `revision` is a branch, created from main if missing; with `create_pr` the commit
      opens a pull request against it instead.
    - `merge_card`: a README.md being pushed is merged with the card already in the repo: the
      repo's metadata and `configs` stay unless ours replace them by name, and the text outside the
      `<!-- curate:begin -->`/`<!-- curate:end -->` markers is kept. The result is validated by the Hub.
    - The commit names the head it was prepared against (`parent_commit`), so a concurrent push
      fails (HubError, 412) instead of silently replacing a card merged from stale state.
    """
    from huggingface_hub import HfApi

    token = require_token(token)
    content = _files_to_push(folder, repo_id, allow_patterns, ignore_patterns, files)
    api = HfApi(token=token)
    warnings: list[str] = []
    with _hub_errors(repo_id):
        _check_can_write(api)
        private_repo, branch, head = _prepare_repo(api, repo_id, repo_type, private, revision, warnings)
        if merge_card and CARD_FILE in content:
            content[CARD_FILE] = _merged_card(api, content[CARD_FILE], repo_id, repo_type, head)
        operations, commit = _commit(api, content, repo_id, repo_type, branch, head, commit_message, commit_description, create_pr)
    for warning in warnings:
        log.warning(warning)
    return _push_result(repo_id, repo_type, branch, head, operations, commit, private_repo, warnings)


def _files_to_push(
    folder: str | Path | None, repo_id: str, allow_patterns: Sequence[str] | None, ignore_patterns: Sequence[str] | None,
    files: Mapping[str, bytes | str | Path] | None,
) -> dict[str, bytes | str | Path]:
    """Path in repo -> content: the folder's files the patterns let through (never ALWAYS_IGNORED), then `files` on top."""
    from huggingface_hub.utils import filter_repo_objects

    content: dict[str, bytes | str | Path] = {}
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise HubError(f"{folder} is not a folder")
        local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        for relative in filter_repo_objects(local, allow_patterns=allow_patterns, ignore_patterns=[*ALWAYS_IGNORED, *(ignore_patterns or [])]):
            content[relative] = folder / relative
    content.update(files or {})
    if not content:
        raise HubError(f"nothing to push to {repo_id}")
    return content


def _prepare_repo(api, repo_id: str, repo_type: str, private: bool, revision: str | None, warnings: list[str]) -> tuple[bool, str, str]:
    """Creates the repo and the branch where missing: (whether the repo is private, the branch, its head commit)."""
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    info = api.repo_info(repo_id, repo_type=repo_type)
    if private and not info.private:
        warnings.append(f"{repo_id} already exists and is public; --private only applies to a new repo (change it in the repo's settings)")
    branch = revision or "main"
    # a tag, a refs/pr/N or a commit id is pushed to as it is; any other revision names a branch
    if revision and not (revision.startswith("refs/") or re.fullmatch(r"[0-9a-f]{40}", revision)):
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    head = api.repo_info(repo_id, repo_type=repo_type, revision=branch).sha
    return bool(info.private), branch, head


def _merged_card(api, ours: bytes | str | Path, repo_id: str, repo_type: str, head: str) -> bytes:
    """Our card merged into the one the repo has at `head` (see merge_cards), validated by the Hub's rules."""
    ours_text = _as_bytes(ours).decode("utf-8")
    theirs = _download_text(api, repo_id, CARD_FILE, repo_type, head)
    card = merge_cards(theirs, ours_text, repo_type=repo_type)
    _validate_card(card, repo_type)
    return card.encode("utf-8")


def _commit(
    api, content: dict[str, bytes | str | Path], repo_id: str, repo_type: str, branch: str, head: str,
    commit_message: str | None, commit_description: str | None, create_pr: bool,
) -> tuple[list, object]:
    """One commit (or pull request) adding every file; huggingface_hub drops the ones the repo already has."""
    from huggingface_hub import CommitOperationAdd

    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=_as_upload(value)) for path, value in sorted(content.items())
    ]
    with _quiet_no_op_warning():  # our result says it in one line
        commit = api.create_commit(
            repo_id,
            operations,
            repo_type=repo_type,
            revision=branch,
            commit_message=commit_message or f"Upload {len(operations)} file(s) with curate",
            commit_description=commit_description,
            create_pr=create_pr,
            # the head the card was merged against: a concurrent push makes this one fail (412)
            parent_commit=None if create_pr else head,
        )
    return operations, commit


def _push_result(repo_id: str, repo_type: str, branch: str, head: str, operations: list, commit, private: bool, warnings: list[str]) -> PushResult:
    """What the push did: the files it changed and left alone, or none changed when no commit was made."""
    unchanged = [op.path_in_repo for op in operations if _same_as_remote(op)]
    changed = bool(commit.pr_url) or commit.oid != head
    return PushResult(
        repo_id=repo_id,
        repo_type=repo_type,
        revision=branch,
        commit_oid=commit.oid,
        commit_url=commit.commit_url,
        pr_url=commit.pr_url,
        changed=changed,
        uploaded=[op.path_in_repo for op in operations if op.path_in_repo not in unchanged] if changed else [],
        unchanged=unchanged if changed else [op.path_in_repo for op in operations],
        private=private,
        warnings=warnings,
    )


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    include_source: bool | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    include_report: bool = True,
) -> PushResult:
    """Publish a run folder as the dataset `repo_id`: parquet configs, card, rerunnable recipe, plots, eval outputs.

    Never the journal. `include_source` (default: the recipe's `hub.include_source`, else True)
    uploads a local source file so the recipe reruns elsewhere; see `dataset_card.publication`.
    """
    from curation import dataset_card

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.stats_file.exists() or not folder.has_split("scored"):
        raise HubError(f"{run_dir} is not a finished run folder (no {run_folder.STATS_FILE} or scored parquet): run `curate run` first")
    _check_repo_id(repo_id)
    token = require_token(token)  # before rendering anything
    recipe = folder.recipe()
    if include_source is None:
        include_source = recipe.hub.include_source if recipe.hub else True
    published = dataset_card.publication(run_dir, repo_id, include_source=include_source)
    if not recipe.license:
        published.warnings.append("the recipe sets no license, so the card has none: add `license:` to the recipe")
    for warning in published.warnings:
        log.warning(warning)
    summary = dataset_card.read_summary(run_dir)
    files = {**published.files, CARD_FILE: published.card.encode("utf-8")}
    if include_report:  # the trace report (curate view), rebuilt when missing or older than the scores
        from curation import view

        report = RunFolder(run_dir).report_file
        if not report.exists() or any(p.stat().st_mtime > report.stat().st_mtime for p in RunFolder(run_dir).split_files("scored")):
            view.write_report(run_dir)
        files[run_folder.REPORT_FILE] = report.read_bytes()
    result = push_folder(
        None,
        repo_id,
        "dataset",
        files=files,
        private=private,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"curate: {recipe.name}, {summary.kept} of {summary.questions} questions kept by {summary.metric}",
        commit_description=f"Pushed with curate {summary.provenance.get('curate_version', '')}; recipe fingerprint {summary.provenance.get('recipe_fingerprint', '?')}.",
        token=token,
    )
    result.warnings[:0] = published.warnings
    return result


@contextmanager
def _quiet_no_op_warning() -> Iterator[None]:
    logger = logging.getLogger("huggingface_hub.hf_api")

    def drop(record: logging.LogRecord) -> bool:
        return "No files have been modified" not in record.getMessage()

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise HubError(f"repo id {repo_id!r} must look like 'org/name'")


def _check_can_write(api) -> None:
    me = api.whoami()
    role = me.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubError(f"the token is read-only: {TOKEN_HELP} with a write token")


def _as_bytes(value: bytes | str | Path) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Path):
        return value.read_bytes()
    return value.encode("utf-8")


def _as_upload(value: bytes | str | Path) -> bytes | str:
    # CommitOperationAdd reads a str as a path: text content must be bytes.
    return str(value) if isinstance(value, Path) else (value.encode("utf-8") if isinstance(value, str) else value)


def _same_as_remote(operation) -> bool:
    remote = getattr(operation, "_remote_oid", None)
    try:
        return remote is not None and remote == operation._local_oid
    except Exception:  # noqa: BLE001 - private attributes of huggingface_hub; a miss only affects the summary line
        return False


def _download_text(api, repo_id: str, path: str, repo_type: str, revision: str) -> str | None:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        local = api.hf_hub_download(repo_id, path, repo_type=repo_type, revision=revision)
    except EntryNotFoundError:
        return None
    return Path(local).read_text(encoding="utf-8")


def _validate_card(card: str, repo_type: str) -> None:
    from huggingface_hub import RepoCard

    try:
        RepoCard(card).validate(repo_type=repo_type)
    except ValueError as exc:
        raise HubError(f"the card's metadata is invalid: {first_line(exc)}") from exc


# --------------------------------------------------------------------------- cards
def merge_cards(theirs: str | None, ours: str, *, repo_type: str = "dataset") -> str:
    """The card to push when the repo may already have one; idempotent: merging a result again changes nothing.

    Metadata: keys we set win, except list-valued labels (`tags`, `task_categories`,
    `source_datasets`, ...), which are united; everything else in their metadata stays. `configs`
    are merged by `config_name`: ours replace theirs of the same name in place, theirs stay
    otherwise, and ours is the only `default: true`. `dataset_info` entries of replaced configs are
    dropped (they describe the old files). Text: only the part between the curate markers is ours;
    a card without markers keeps its text above ours.
    """
    from huggingface_hub import RepoCard

    if theirs is None or not theirs.strip():
        return ours
    try:
        their_card = RepoCard(theirs)
    except Exception as exc:  # noqa: BLE001 - invalid YAML in their card
        raise HubError(f"the card already in the repo has invalid metadata ({first_line(exc)}); fix it on the Hub first") from exc
    our_card = RepoCard(ours)
    metadata = merge_metadata(their_card.data.to_dict(), our_card.data.to_dict())
    text = _merge_text(their_card.text, our_card.text)
    return _compose_card(metadata, text, repo_type)


_UNITED_KEYS = {"tags", "task_categories", "task_ids", "source_datasets", "language", "datasets"}


def merge_metadata(theirs: dict, ours: dict) -> dict:
    merged = dict(theirs)
    for key, value in ours.items():
        if key == "configs":
            merged[key] = _merge_configs(theirs.get(key), value)
        elif key == "dataset_info":
            continue  # merged below, entry by entry
        elif key in _UNITED_KEYS and isinstance(theirs.get(key), list) and isinstance(value, list):
            merged[key] = sorted(set(map(str, theirs[key])) | set(map(str, value)))
        else:
            merged[key] = value
    replaced = {c.get("config_name") for c in ours.get("configs") or [] if isinstance(c, dict)}
    info = merged.get("dataset_info")
    if replaced and isinstance(info, list):
        kept = [entry for entry in info if not (isinstance(entry, dict) and entry.get("config_name", "default") in replaced)]
        merged["dataset_info"] = kept if kept else None
    elif replaced and isinstance(info, dict) and info.get("config_name", "default") in replaced:
        merged["dataset_info"] = None
    if ours.get("dataset_info"):
        others = merged.get("dataset_info") or []
        others = others if isinstance(others, list) else [others]
        merged["dataset_info"] = others + list(ours["dataset_info"])
    return {k: v for k, v in merged.items() if v is not None}


def _merge_configs(theirs, ours: list) -> list:
    if not isinstance(theirs, list):
        return ours
    by_name = {c["config_name"]: c for c in ours}
    has_default = any(c.get("default") for c in ours)
    merged, placed = [], set()
    for config in theirs:
        name = config.get("config_name") if isinstance(config, dict) else None
        if name in by_name:
            merged.append(by_name[name])
            placed.add(name)
            continue
        if isinstance(config, dict) and has_default and config.get("default"):
            config = {k: v for k, v in config.items() if k != "default"}
        merged.append(config)
    merged.extend(c for c in ours if c["config_name"] not in placed)
    return merged


_BEGIN = re.compile(r"<!-- curate:begin\b[^>]*-->")
_END = "<!-- curate:end -->"


def _generated_span(text: str) -> tuple[int, int] | None:
    begin = _BEGIN.search(text)
    end = text.rfind(_END)
    if begin is None or end < begin.end():
        return None
    return begin.start(), end + len(_END)


def _merge_text(theirs: str, ours: str) -> str:
    """Our generated part (between `<!-- curate:begin ... -->` and `<!-- curate:end -->`) replaces theirs; the rest is theirs."""
    our_span = _generated_span(ours)
    if our_span is None:
        return ours
    generated = ours[our_span[0] : our_span[1]]
    their_span = _generated_span(theirs)
    if their_span is not None:
        return theirs[: their_span[0]] + generated + theirs[their_span[1] :]
    return theirs.rstrip("\n") + "\n\n" + generated + "\n"


def _compose_card(metadata: dict, text: str, repo_type: str) -> str:
    from huggingface_hub import DatasetCardData, ModelCardData
    from huggingface_hub.repocard_data import CardData

    data_class = {"dataset": DatasetCardData, "model": ModelCardData}.get(repo_type, CardData)
    return f"---\n{data_class(**metadata).to_yaml()}\n---\n{text if text.startswith(chr(10)) else chr(10) + text}"
