"""Remote recipes: fetching ``hf://`` recipes and the rules a recipe from the Hub must follow.

This is part of loading a recipe (``curation.recipe.load.load_recipe`` calls it for ``hf://`` locations), not
of pushing: it downloads one recipe (and the source file it names in its repo) at one commit,
and refuses what a recipe written by someone else may not do (read outside its repo, choose
where files are written, send your API key to its own endpoint, use a catastrophic regex).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from curation.recipe.yaml_marks import MarkIndex, parse_yaml
from curation.types import Problem, RecipeError, first_line

if TYPE_CHECKING:
    from curation.recipe.load import LoadedRecipe

RECIPE_FILE = "recipe.yaml"
RECIPE_MAX_BYTES = 1_000_000  # a recipe is a few KB; anything bigger is not one
# Endpoint fields checked by shared_endpoint_problems.
SHARED_ENDPOINTS = (("generator", "url"), ("critic", "url"), ("scorer", "url"))
_WHOLE_ENV = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class RecipeLocation:
    repo_type: str
    repo_id: str
    revision: str | None
    path: str

    def uri(self, path: str | None = None) -> str:
        prefix = {"dataset": "datasets/", "space": "spaces/"}.get(self.repo_type, "")
        revision = f"@{self.revision}" if self.revision else ""
        return f"hf://{prefix}{self.repo_id}{revision}/{path or self.path}"


def parse_location(location: str) -> RecipeLocation:
    """Parse `hf://[datasets/|spaces/]ORG/NAME[@REVISION][/PATH]` with huggingface_hub's own parser."""
    from huggingface_hub.utils import parse_hf_uri


    try:
        uri = parse_hf_uri(location)
    except Exception as exc:  # noqa: BLE001 - HfUriError and friends
        raise RecipeError([Problem(location, 1, 1, "", f"not a Hub location ({first_line(exc)}); use hf://datasets/ORG/NAME[@REVISION][/recipe.yaml]")]) from None
    if uri.type not in ("dataset", "model", "space") or "/" not in (uri.id or ""):
        raise RecipeError([Problem(location, 1, 1, "", "a recipe location names a repo: hf://datasets/ORG/NAME[@REVISION][/recipe.yaml]")])
    path = (uri.path_in_repo or "").strip("/")
    if not path.endswith((".yaml", ".yml")):
        path = posixpath.join(path, RECIPE_FILE) if path else RECIPE_FILE
    return RecipeLocation(uri.type, uri.id, uri.revision, path)


def join_location(location: str, relative: str) -> str:
    """`extends: base.yaml` inside a recipe on the Hub names a file of the same repo and revision."""

    base = parse_location(location)
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(base.path), relative))
    if joined.startswith("../") or joined == ".." or relative.startswith("/"):
        raise RecipeError([Problem(location, 1, 1, "extends", f"{relative!r} is outside the repo")])
    return base.uri(joined)


def fetch_recipe(location: str) -> tuple[str, str, Path]:
    """Download a recipe (and the source file it names in its repo) at one commit; return (text, name, folder).

    The folder is the local snapshot of the repo, so `source.path: source/x.csv` resolves there.
    With HF_HUB_OFFLINE=1 the local cache answers.
    """
    from huggingface_hub import HfApi

    where = parse_location(location)
    api = HfApi()
    local, commit = _download_recipe(api, where, location)
    text = local.read_text(encoding="utf-8")
    try:
        data, node = parse_yaml(text, location)
    except RecipeError:
        return text, location, local.parent  # load_recipe reports it
    source = data.get("source") if isinstance(data, dict) else None
    source_path = source.get("path") if isinstance(source, dict) else None
    if isinstance(source_path, str) and _inside_repo(source_path, posixpath.dirname(where.path)):
        _download_source(api, where, commit, source_path, location, MarkIndex(node))
    return text, location, local.parent


def _problem(location: str, message: str, path: tuple = (), marks: MarkIndex | None = None) -> RecipeError:
    line, col = marks.locate(path) if marks else (1, 1)
    return RecipeError([Problem(location, line, col, ".".join(path), message)])


def _kind(where: RecipeLocation) -> str:
    return "" if where.repo_type == "model" else f"{where.repo_type} "


def _download_recipe(api, where: RecipeLocation, location: str) -> tuple[Path, str | None]:
    """The recipe file in the local cache, and the commit it came from; every Hub failure as one RecipeError."""
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    kind = _kind(where)
    try:
        if not constants.HF_HUB_OFFLINE:
            entries = api.get_paths_info(where.repo_id, [where.path], repo_type=where.repo_type, revision=where.revision)
            if not entries or getattr(entries[0], "size", None) is None:
                raise _problem(location, f"no file {where.path} in {kind}{where.repo_id}@{where.revision or 'main'}")
            if entries[0].size > RECIPE_MAX_BYTES:
                raise _problem(location, f"{where.path} is {entries[0].size} bytes: too big to be a recipe")
        # By revision name, so the cache records the ref and HF_HUB_OFFLINE=1 finds it again.
        local = Path(api.hf_hub_download(where.repo_id, where.path, repo_type=where.repo_type, revision=where.revision))
        # The source file comes from the very commit the recipe came from: snapshots/<commit>/...
        parts = local.parts
        commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else where.revision
    except RecipeError:
        raise
    except LocalEntryNotFoundError:
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise _problem(location, f"cannot reach the Hub at {constants.ENDPOINT}{offline}, and {where.path} of {kind}{where.repo_id} is not in the local cache") from None
    except RevisionNotFoundError:
        raise _problem(location, f"no revision {where.revision!r} in {kind}{where.repo_id}") from None
    except RepositoryNotFoundError:
        raise _problem(location, f"no {kind}repo {where.repo_id} on the Hub, or it is private and the token cannot see it") from None
    except EntryNotFoundError:
        raise _problem(location, f"no file {where.path} in {kind}{where.repo_id}@{where.revision or 'main'}") from None
    except OSError as exc:
        raise _problem(location, f"cannot fetch it from the Hub at {constants.ENDPOINT} ({first_line(exc)}), and it is not in the local cache") from None
    if local.stat().st_size > RECIPE_MAX_BYTES:
        raise _problem(location, f"{where.path} is too big to be a recipe")
    return local, commit


def _download_source(api, where: RecipeLocation, commit: str | None, source_path: str, location: str, marks: MarkIndex) -> None:
    """Fetch the recipe's source.path from its repo at the recipe's commit, into the same local snapshot."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    kind = _kind(where)
    in_repo = posixpath.normpath(posixpath.join(posixpath.dirname(where.path), source_path))
    try:
        api.hf_hub_download(where.repo_id, in_repo, repo_type=where.repo_type, revision=commit)
    except LocalEntryNotFoundError:
        raise _problem(location, f"{in_repo} of {kind}{where.repo_id} is not in the local cache and the Hub cannot be reached", ("source", "path"), marks) from None
    except EntryNotFoundError:
        raise _problem(
            location,
            f"{in_repo} is not in {kind}{where.repo_id}: its publisher did not upload the source file; "
            f"write a recipe with `extends: {location}` and your own source.path",
            ("source", "path"),
            marks,
        ) from None
    except OSError as exc:
        raise _problem(location, f"cannot fetch {in_repo} ({first_line(exc)})", ("source", "path"), marks) from None


def _inside_repo(path: str, folder: str = "") -> bool:
    """A relative path that, taken from `folder` (a folder of the repo), stays inside the repo."""
    if not path or path.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:", path) or "\\" in path:
        return False
    normal = posixpath.normpath(posixpath.join(folder, path))
    return not (normal == ".." or normal.startswith("../"))


def shared_recipe_problems(data: dict, file: str, marks) -> list[Problem]:
    """What a recipe from the Hub may not do, whatever the recipe that extends it says."""

    problems: list[Problem] = []
    folder = posixpath.dirname(parse_location(file).path) if file.startswith("hf://") else ""

    def refuse(path: tuple, message: str) -> None:
        line, col = marks.locate(path)
        problems.append(Problem(file, line, col, ".".join(path), f"a recipe from the Hub {message}"))

    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    if isinstance(source.get("path"), str) and not _inside_repo(source["path"], folder):
        refuse(("source", "path"), "may only read files in its own repo (a relative path without '..')")
    dataset = source.get("dataset")
    if isinstance(dataset, str) and (not _HUB_ID.fullmatch(dataset) or Path(dataset).exists()):
        refuse(("source", "dataset"), "must name a Hub dataset (org/name), not a local folder")
    if "output_dir" in data:
        refuse(("output_dir",), "may not choose where files are written; pass -o to `curate run`")
    if isinstance(data.get("train"), dict) and "output_dir" in data["train"]:
        refuse(("train", "output_dir"), "may not choose where files are written")
    extends = data.get("extends")
    if isinstance(extends, str) and not extends.startswith("hf://") and not _inside_repo(extends, folder):
        refuse(("extends",), "may only extend recipes on the Hub or in its own repo")
    answer = data.get("answer") if isinstance(data.get("answer"), dict) else {}
    if isinstance(answer.get("regex"), str) and _nested_quantifier(answer["regex"]):
        refuse(("answer", "regex"), "may not use a regex with nested quantifiers like (a+)+: it can backtrack for hours on one trace")
    for section, key in SHARED_ENDPOINTS:
        block = data.get(section)
        value = block.get(key) if isinstance(block, dict) else None
        for url in [value] if isinstance(value, str) else (value if isinstance(value, list) else []):
            if isinstance(url, str) and "${" in url and not _WHOLE_ENV.fullmatch(url.strip()):
                refuse((section, key), "may take an endpoint from the environment only as a whole ${MY_ENDPOINT}, without a default or text around it: a reference inside a URL sends the variable to the server")
    return problems


def _nested_quantifier(pattern: str) -> bool:
    """True when a repeated group contains another unbounded repeat: the classic catastrophic-backtracking shape.

    Python's `re` has no timeout, so a recipe from the Hub could otherwise hang the parse stage.
    A heuristic (star height > 1), not a proof: it catches `(a+)+`, `(a*b?)*`, `(x|y+)*`.
    """
    try:
        import re._parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover
        import sre_parse  # type: ignore[no-redef]
    try:
        tree = sre_parse.parse(pattern)
    except Exception:  # noqa: BLE001 - an invalid regex is reported by recipe validation
        return False
    repeats = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT}

    def children(av) -> list:
        if isinstance(av, sre_parse.SubPattern):
            return [av]
        if isinstance(av, (tuple, list)):
            return [x for item in av for x in children(item)]
        return []

    def walk(items, inside_repeat: bool) -> bool:
        for op, av in items:
            unbounded = op in repeats and (av[1] is sre_parse.MAXREPEAT or av[1] > 100)
            if unbounded and inside_repeat:
                return True
            if any(walk(child, inside_repeat or unbounded) for child in children(av)):
                return True
        return False

    return walk(tree, False)


def shared_endpoint_problems(loaded: LoadedRecipe) -> list[Problem]:
    """An API key from your environment may only go to an endpoint you chose.

    A recipe from the Hub that names its own endpoint URL and asks for `api_key: ${SOME_KEY}`
    would send your key to that server. Allowed: the endpoint as a whole `${VAR}` reference, or set
    in your own recipe that `extends:` the shared one.
    """
    problems = []
    for section, key in SHARED_ENDPOINTS:
        if (section, key) not in loaded.shared:
            continue
        config = getattr(loaded.recipe, section, None)
        if config is None or not config.api_key:
            continue
        urls = config.urls
        if any(not _WHOLE_ENV.fullmatch(url.strip()) for url in urls):
            problems.append(
                loaded.problem(
                    (section, key),
                    f"a recipe from the Hub names this endpoint itself and would send it {section}.api_key; "
                    f"set {section}.url in your own recipe that `extends:` it, or as a whole ${{VAR}} reference",
                )
            )
    return problems
