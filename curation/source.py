"""Source: read the question rows and render each one into chat messages.

Templates are rendered by a sandboxed jinja2 environment: a shared recipe can format strings,
never reach Python internals. Each row gets a stable ``id`` so the journal, the parquet output
and later evaluations all refer to the same question.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np
import pyarrow as pa

from curation.recipe.load import LoadedRecipe
from curation.recipe.sections import SourceConfig
from curation.templating import template_environment, template_variables  # noqa: F401 - re-exported
from curation.types import Problem, Question, RecipeError, StageStats

# Columns curate itself writes to the scored split; a source column may not shadow them.
RESERVED_COLUMNS = {
    "id", "prompt", "completion", "answer", "label", "uncertainty", "kept", "drop_reason",
    "kept_trace", "finish_reason", "n_samples", "n_unparsed", "majority_answer", "agreement", "teacher_prompt", "calibration",
}


@dataclass
class SourceRows:
    questions: list[Question]
    column_names: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def stage(self) -> StageStats:
        """The source stage's section of stats.json: rows read, questions made, the rest filtered or not sampled."""
        rows_in = self.stats.get("source_rows", len(self.questions))
        stage = StageStats(rows_in=rows_in, rows_out=len(self.questions), seconds=self.seconds)
        stage.drop("filtered_or_not_sampled", rows_in - len(self.questions))
        return stage


def _format_of(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = "".join(path.suffixes).lower()
    for fmt, endings in (("csv", (".csv", ".csv.gz", ".tsv")), ("jsonl", (".jsonl", ".json", ".jsonl.gz")), ("parquet", (".parquet",))):
        if suffixes.endswith(endings):
            return fmt
    raise ValueError(f"cannot tell the format of {path.name}; set source.format")


# --------------------------------------------------------------------------- PerturbQA
# PerturbQA (Wu et al., ICLR 2025) ships two CSVs per cell line, both `pert,gene,label,split`:
# `<cell>-de.csv` says whether knocking down `pert` changes `gene` at all (1 = differentially
# expressed), and `<cell>-dir.csv` lists only the DE pairs with their direction (1 = up, 0 = down).
# Joined on (pert, gene) they give the three-class task both Stoisser et al. and SynthPert use.
PERTURBQA_CELL_LINES = {"k562": "K562", "rpe1": "RPE1", "hepg2": "HepG2", "jurkat": "Jurkat"}
# One line of context a prompt may use (`cell_type`); SynthPert found long database context hurt, so no more.
PERTURBQA_CELL_TYPES = {
    "k562": "chronic myelogenous leukemia cells with erythroid features",
    "rpe1": "non-transformed, hTERT-immortalized retinal pigment epithelial cells",
    "hepg2": "liver cancer (hepatoblastoma) cells",
    "jurkat": "acute T-cell leukemia cells",
}
PERTURBQA_UP, PERTURBQA_DOWN, PERTURBQA_NONE = "upregulated", "downregulated", "not differentially expressed"
PERTURBQA_CLASSES = (PERTURBQA_UP, PERTURBQA_DOWN, PERTURBQA_NONE)
# `cell_line` is the display name (K562, HepG2, ...) and `cell_type` a short description, ready for a
# prompt; `label` is the class name.
PERTURBQA_COLUMNS = ["pert", "gene", "cell_line", "cell_type", "split", "label"]


class PerturbQAFileMissing(FileNotFoundError):
    """The folder exists but lacks a cell line's files (a cell line name that is not PerturbQA's, most likely)."""


def perturbqa_cell_lines(config: SourceConfig) -> list[str]:
    cells = config.cell_line if isinstance(config.cell_line, list) else [config.cell_line]
    return [str(c).lower() for c in cells if c]


# The label files of all four cell lines ship inside the package (CC BY 4.0, with attribution: see
# curation/data/perturbqa/README.md), as zstd parquet with dictionary-encoded genes: 1.4 MB in all
# instead of 14 MB of CSV. `format: perturbqa` with no `path` or `dataset` reads these.
PACKAGED_PERTURBQA = Path(__file__).parent / "data" / "perturbqa"
PERTURBQA_CITATION = (
    "Wu et al., Contextualizing biological perturbation experiments through language (PerturbQA), ICLR 2025; "
    "data under CC BY 4.0, derived from Replogle et al., Cell 2022 (K562, RPE1) and Nadig et al. 2024 (HepG2, Jurkat)"
)


def _perturbqa_pair(folder: Path, cell: str) -> tuple[Path, Path] | None:
    """(de, dir) files of one cell line in a folder, as CSV (the benchmark's own) or parquet (the packaged copy)."""
    for suffix in (".csv", ".parquet"):
        de, direction = folder / f"{cell}-de{suffix}", folder / f"{cell}-dir{suffix}"
        if de.is_file() and direction.is_file():
            return de, direction
    return None


def perturbqa_files(config: SourceConfig, loaded: LoadedRecipe | None = None) -> dict[str, tuple[Path, Path]]:
    """(de, dir) files per cell line: the packaged copy, a local folder, or a Hub dataset repo (only those files are fetched)."""
    cells = perturbqa_cell_lines(config)
    names = [f"{cell}-{kind}.csv" for cell in cells for kind in ("de", "dir")]
    if config.path is None and config.dataset is None:
        pairs = {cell: _perturbqa_pair(PACKAGED_PERTURBQA, cell) for cell in cells}
        missing = [cell for cell, pair in pairs.items() if pair is None]
        if missing:
            raise PerturbQAFileMissing(f"no packaged PerturbQA files for {', '.join(missing)} (in {PACKAGED_PERTURBQA})")
        return pairs
    if config.path is not None:
        folder = (loaded.resolve_path(config.path) if loaded else Path(config.path)).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"PerturbQA folder not found: {folder} (it should hold {', '.join(names)})")
        pairs = {cell: _perturbqa_pair(folder, cell) for cell in cells}
        missing = [name for cell, pair in pairs.items() if pair is None for name in (f"{cell}-de.csv", f"{cell}-dir.csv")]
        if missing:
            raise PerturbQAFileMissing(f"{', '.join(missing)} not in {folder}")
        return pairs

    from huggingface_hub import snapshot_download

    # The files may sit at the repo root or in a folder (the benchmark keeps them in perturbqa/datasets/).
    patterns = [pattern for name in names for pattern in (name, f"**/{name}")]
    root = Path(snapshot_download(config.dataset, repo_type="dataset", revision=config.revision, allow_patterns=patterns))
    found: dict[str, Path] = {}
    for name in names:
        hits = sorted(root.rglob(name))
        if not hits:
            raise FileNotFoundError(f"{name} not in the Hub dataset {config.dataset}")
        if len(hits) > 1:
            raise ValueError(f"{name} is in several folders of {config.dataset}: {', '.join(str(h.relative_to(root)) for h in hits)}")
        found[name] = hits[0]
    return {cell: (found[f"{cell}-de.csv"], found[f"{cell}-dir.csv"]) for cell in cells}


PERTURBQA_TYPES = {"pert": pa.string(), "gene": pa.string(), "label": pa.int8(), "split": pa.string()}


def _read_perturbqa_csv(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path, columns=list(PERTURBQA_TYPES)).cast(pa.schema(PERTURBQA_TYPES))
        except (pa.ArrowInvalid, KeyError) as exc:
            raise ValueError(f"{path.name}: not a PerturbQA file (columns pert, gene, label, split): {str(exc).splitlines()[0]}") from None
    import pyarrow.csv as pcsv

    options = pcsv.ConvertOptions(column_types=PERTURBQA_TYPES, include_columns=list(PERTURBQA_TYPES))
    try:
        return pcsv.read_csv(path, convert_options=options)
    except (pa.ArrowInvalid, KeyError) as exc:
        raise ValueError(f"{path.name}: not a PerturbQA file (columns pert, gene, label, split): {str(exc).splitlines()[0]}") from None


def join_perturbqa(de: pa.Table, direction: pa.Table, cell: str, split: str | None) -> pa.Table:
    """The three-class table of one cell line: PERTURBQA_COLUMNS, in the -de file's row order."""
    import pyarrow.compute as pc

    if split is not None:
        de = de.filter(pc.equal(de["split"], split))
        direction = direction.filter(pc.equal(direction["split"], split))
    # Acero's hash join does not keep row order; a row number restores it, so ids and samples are stable.
    de = de.append_column("_row", pa.array(np.arange(de.num_rows), type=pa.int64()))
    direction = direction.select(["pert", "gene", "label"]).rename_columns(["pert", "gene", "_up"])
    joined = de.join(direction, keys=["pert", "gene"], join_type="left outer").sort_by("_row")
    expressed = pc.equal(joined["label"], 1)
    has_direction = pc.is_valid(joined["_up"])
    unmatched = direction.num_rows - (pc.sum(has_direction.cast(pa.int64())).as_py() or 0)
    if unmatched:
        raise ValueError(f"{cell}: {unmatched} row(s) of {cell}-dir.csv have no (pert, gene) pair in {cell}-de.csv")
    inconsistent = pc.sum(pc.not_equal(expressed, has_direction).cast(pa.int64())).as_py() or 0
    if inconsistent:
        raise ValueError(f"{cell}: {inconsistent} pair(s) are differentially expressed in {cell}-de.csv but lack a direction in {cell}-dir.csv, or the reverse")
    label = pc.if_else(
        expressed,
        pc.if_else(pc.equal(joined["_up"], 1), pa.scalar(PERTURBQA_UP), pa.scalar(PERTURBQA_DOWN)),
        pa.scalar(PERTURBQA_NONE),
    )
    def constant(value: str) -> pa.Array:
        return pa.array(np.full(joined.num_rows, value, dtype=object), type=pa.string())

    return pa.table(
        {
            "pert": joined["pert"],
            "gene": joined["gene"],
            "cell_line": constant(PERTURBQA_CELL_LINES.get(cell, cell)),
            "cell_type": constant(PERTURBQA_CELL_TYPES.get(cell, f"{cell} cells")),
            "split": joined["split"],
            "label": label,
        }
    )


def read_perturbqa(config: SourceConfig, loaded: LoadedRecipe | None = None) -> pa.Table:
    """Every (perturbation, target gene) question of the recipe's cell lines and split, with its 3-class label."""
    split = None if config.split in ("all", "*") else config.split
    tables = [
        join_perturbqa(_read_perturbqa_csv(de), _read_perturbqa_csv(direction), cell, split)
        for cell, (de, direction) in perturbqa_files(config, loaded).items()
    ]
    return pa.concat_tables(tables)


# --------------------------------------------------------------------------- reading
def read_table(config: SourceConfig, loaded: LoadedRecipe | None = None) -> pa.Table:
    """Read the whole source as an Arrow table."""
    if config.format == "perturbqa":
        return read_perturbqa(config, loaded)
    if config.path is not None:
        path = loaded.resolve_path(config.path) if loaded else Path(config.path)
        if not path.exists():
            raise FileNotFoundError(f"source file not found: {path}")
        fmt = _format_of(path, config.format)
        if fmt == "csv":
            import pyarrow.csv as pcsv

            delimiter = "\t" if str(path).endswith(".tsv") else ","
            return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter))
        if fmt == "jsonl":
            import pyarrow.json as pjson

            return pjson.read_json(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    import datasets

    ds = datasets.load_dataset(config.dataset, config.config, split=config.split, revision=config.revision)
    return ds.data.table


def _stable_id(columns: dict[str, Any]) -> str:
    blob = json.dumps(columns, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _apply_filter(table: pa.Table, wanted: dict[str, Any]) -> pa.Table:
    import pyarrow.compute as pc

    mask = None
    for column, value in wanted.items():
        values = value if isinstance(value, list) else [value]
        col = table.column(column)
        # Compare as strings so `label: 1` in YAML matches a CSV integer column and vice versa.
        cond = pc.is_in(pc.cast(col, pa.string()), value_set=pa.array([str(v) for v in values]))
        mask = cond if mask is None else pc.and_(mask, cond)
    return table.filter(mask) if mask is not None else table


def class_quotas(sizes: dict[str, int], limit: int | None, how: str) -> dict[str, int]:
    """Rows to draw per group. balanced: equal shares (a group too small to fill its share gives the
    rest to the others); stratified: shares in proportion to group size.

    Both only grow as ``limit`` grows (stratified uses Sainte-Laguë's sequential allocation, which,
    unlike rounding by largest remainders, never takes a row away from a group when the total grows).
    """
    if limit is None and how == "balanced":  # no limit: every group cut to the smallest one
        smallest = min(sizes.values(), default=0)
        return {group: smallest for group in sizes}
    if limit is None or limit >= sum(sizes.values()):
        return dict(sizes)
    names = sorted(sizes)
    size = np.array([sizes[g] for g in names], dtype=np.float64)
    quota = np.zeros(len(names), dtype=np.int64)
    if how == "stratified":
        for _ in range(limit):  # next row to the group with the highest size / (2q + 1); ties: first name
            priority = np.where(quota < size, size / (2 * quota + 1), -np.inf)
            quota[int(np.argmax(priority))] += 1
        return {g: int(q) for g, q in zip(names, quota)}
    left, open_groups = limit, list(range(len(names)))
    while left > 0 and open_groups:  # water-filling: small groups are used up, the others share the rest
        share, extra = divmod(left, len(open_groups))
        for index, group in enumerate(open_groups):
            take = int(min(size[group] - quota[group], share + (1 if index < extra else 0)))
            quota[group] += take
            left -= take
        open_groups = [g for g in open_groups if quota[g] < size[g]]
    return {g: int(q) for g, q in zip(names, quota)}


def sample_order(table: pa.Table, config: SourceConfig) -> np.ndarray:
    """Row indices to keep, in question order.

    The rows are shuffled once (``shuffle_seed``; 0 when sampling by class without one), and each
    group then contributes its first rows in that shuffled order up to its quota. A bigger
    ``limit`` therefore only adds questions: a study can grow without losing its journal.
    """
    n = table.num_rows
    if config.sample == "natural":
        order = np.arange(n) if config.shuffle_seed is None else np.random.default_rng(config.shuffle_seed).permutation(n)
        return order if config.limit is None else order[: config.limit]
    order = np.random.default_rng(config.shuffle_seed or 0).permutation(n)
    column = config.sample_by or config.label_column
    if column not in table.column_names:
        raise ValueError(f"source.sample_by: column {column!r} not in source")
    import pyarrow.compute as pc

    encoded = pc.fill_null(pc.cast(table.column(column), pa.string()), "None").combine_chunks().dictionary_encode()
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)[order]
    counts = np.bincount(codes, minlength=len(names))
    quotas = class_quotas({name: int(count) for name, count in zip(names, counts)}, config.limit, config.sample)
    # rank of each shuffled row within its group: position in a stable sort by group minus the group's start
    by_group = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_group = np.empty(n, dtype=np.int64)
    rank_in_group[by_group] = np.arange(n) - starts[codes[by_group]]
    wanted = rank_in_group < np.array([quotas[name] for name in names], dtype=np.int64)[codes]
    return order[wanted]


def label_columns(config: SourceConfig) -> set[str]:
    """Columns holding ground truth: the label column, and PerturbQA's `label` whatever it is called."""
    return {c for c in (config.label_column, "label" if config.format == "perturbqa" else None) if c}


def label_leak_problems(loaded: LoadedRecipe) -> list[Problem]:
    """Where the ground truth may appear in a prompt.

    Showing the teacher the answer is rationalisation (SynthPert), which a recipe must ask for by
    name (``source.label_in_prompt``), and only in ``prompt.teacher_hint``: ``system`` and ``user``
    are also the dataset's prompt, which a student trains and is evaluated on, and must not hold it.
    """
    config, prompt = loaded.recipe.source, loaded.recipe.prompt
    if prompt is None:  # imported traces with their own prompt column: no template to leak through
        return []
    labels = label_columns(config)
    problems = []
    for key, template in (("system", prompt.system), ("user", prompt.user), ("teacher_hint", prompt.teacher_hint)):
        used = sorted(template_variables(template) & labels) if template else []
        if not used:
            continue
        shown = f"template shows the ground truth ({', '.join(used)})"
        if key != "teacher_hint":
            message = (
                f"{shown} in the dataset's own prompt, which a student would train and be evaluated on; to have the teacher "
                "explain a known label (SynthPert), put it in prompt.teacher_hint and set source.label_in_prompt: true"
            )
        elif not config.label_in_prompt:
            message = f"{shown} to the teacher: that is SynthPert-style rationalisation, not label-free curation; set source.label_in_prompt: true to ask for it"
        else:
            continue
        problems.append(loaded.problem(("prompt", key), message))
    return problems


def load_questions(loaded: LoadedRecipe) -> SourceRows:
    """Read, filter, shuffle, limit and render the recipe's source into questions (then the calibration file's, if any)."""
    started = time.monotonic()
    recipe = loaded.recipe
    config = recipe.source
    raise_if_problems(label_leak_problems(loaded))
    table = read_table(config, loaded)
    total = table.num_rows
    questions = render_questions(_filtered_sample(table, config), config, recipe)
    stats = {"source_rows": total, "questions": len(questions)}
    calibrate = recipe.calibrate
    if calibrate is not None and calibrate.source is not None:
        extra = render_questions(_filtered_sample(read_table(calibrate.source, loaded), calibrate.source), calibrate.source, recipe, calibration=True)
        refuse_overlap(questions, extra)
        questions += extra
        stats["calibration_file_questions"] = len(extra)
    mark_calibration(questions, recipe)
    return SourceRows(questions=questions, column_names=table.column_names, stats=stats, seconds=time.monotonic() - started)


def _filtered_sample(table: pa.Table, config: SourceConfig) -> pa.Table:
    if config.filter:
        table = _apply_filter(table, config.filter)
    return table.take(pa.array(sample_order(table, config), type=pa.int64()))


def render_questions(table: pa.Table, config: SourceConfig, recipe, *, calibration: bool = False) -> list[Question]:
    """One question per row: its id, its rendered prompt (and the teacher's), its label."""
    env = template_environment()
    system = env.from_string(recipe.prompt.system) if recipe.prompt.system else None
    user = env.from_string(recipe.prompt.user)
    hint = env.from_string(recipe.prompt.teacher_hint) if recipe.prompt.teacher_hint else None
    id_template = env.from_string(config.id_template) if config.id_template else None

    questions: list[Question] = []
    seen_ids: set[str] = set()
    for columns in table.to_pylist():
        if config.id_column:
            row_id = str(columns[config.id_column])
        elif id_template:
            row_id = id_template.render(**columns)
        else:
            row_id = _stable_id(columns)
        if row_id in seen_ids:
            raise ValueError(f"duplicate row id {row_id!r}: make source.id_column/id_template unique")
        seen_ids.add(row_id)
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": system.render(**columns)})
        messages.append({"role": "user", "content": user.render(**columns)})
        label = None
        if config.label_column:
            raw = columns[config.label_column]
            label = None if raw is None else str(raw)
            if config.label_map and label is not None:
                label = config.label_map.get(label, label)
        teacher = None
        if hint is not None:  # the teacher's user message gets the hint after a blank line; the dataset's prompt does not
            teacher = messages[:-1] + [{"role": "user", "content": messages[-1]["content"].rstrip() + "\n\n" + hint.render(**columns)}]
        source_columns = {k: v for k, v in columns.items() if k != config.label_column}
        questions.append(Question(id=row_id, messages=messages, columns=source_columns, label=label, teacher_messages=teacher, calibration=calibration))
    return questions


def refuse_overlap(pool: Sequence[Question], calibration: Sequence[Question]) -> None:
    """A calibration question that is also a pool question would be both judged and published: refuse the file."""
    pool_ids = {q.id for q in pool}
    pool_prompts = {json.dumps(q.messages, sort_keys=True) for q in pool}
    shared = [q.id for q in calibration if q.id in pool_ids or json.dumps(q.messages, sort_keys=True) in pool_prompts]
    if shared:
        raise ValueError(
            f"calibrate.source: {len(shared)} of its {len(calibration)} questions are already in the pool (first: {shared[0]!r}); "
            "calibration questions must be held out from the questions that can be kept"
        )
    missing = sum(q.label is None for q in calibration)
    if missing:
        raise ValueError(f"calibrate.source: {missing} of its {len(calibration)} rows have no label in label_column")


def mark_calibration(questions: Sequence[Question], recipe) -> int:
    """With ``calibrate.size``: hold out that many labelled questions, drawn with ``calibrate.seed``.

    The draw depends only on the labelled questions' ids (sorted), not on their order, so every way
    to a run folder (run, score, merge, shards) holds out the same questions. Returns how many are marked.
    """
    calibrate = recipe.calibrate
    if calibrate is None or calibrate.size is None:
        return sum(q.calibration for q in questions)
    labelled = sorted(q.id for q in questions if q.label is not None)
    if len(labelled) < calibrate.size:
        raise ValueError(f"calibrate.size is {calibrate.size} but the source has {len(labelled)} labelled rows")
    held_out = set(np.random.default_rng(calibrate.seed).permutation(np.array(labelled, dtype=object))[: calibrate.size])
    for question in questions:
        question.calibration = question.id in held_out
    return len(held_out)


def check_source(loaded: LoadedRecipe) -> list[Problem]:
    """Problems that need the data itself: missing files, and columns the recipe references but the source lacks."""
    config = loaded.recipe.source
    problems = label_leak_problems(loaded)
    where = ("source", "path") if config.path else ("source", "dataset") if config.dataset else ("source",)
    if config.format == "perturbqa":
        # Reading and joining a cell line takes a fraction of a second, and catches every data problem.
        try:
            table = read_perturbqa(config, loaded)
        except Exception as exc:  # missing folder or file, Hub unreachable, malformed CSV...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            unknown = sorted(set(perturbqa_cell_lines(config)) - set(PERTURBQA_CELL_LINES))
            if isinstance(exc, FileNotFoundError) and unknown:
                where, reason = ("source", "cell_line"), f"{reason}; PerturbQA's cell lines are {', '.join(PERTURBQA_CELL_LINES)}"
            elif type(exc) is FileNotFoundError and config.path:
                reason += " (leave out source.path to use the PerturbQA copy that ships with curate)"
            return problems + [loaded.problem(where, f"cannot read PerturbQA source: {reason}")]
        if table.num_rows == 0:
            return problems + [loaded.problem(("source", "split"), f"no {', '.join(perturbqa_cell_lines(config))} rows with split {config.split!r} (use train, test or all)")]
        columns = set(PERTURBQA_COLUMNS)
    else:
        if config.path is not None:
            path = loaded.resolve_path(config.path)
            if not path.exists():
                return problems + [loaded.problem(("source", "path"), f"file not found: {path}")]
            try:
                _format_of(path, config.format)
            except ValueError as exc:
                return problems + [loaded.problem(("source", "path"), str(exc))]
        try:
            columns = set(peek_columns(loaded))
        except Exception as exc:  # unreadable file, dataset not reachable offline...
            return problems + [loaded.problem(where, f"cannot read source: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]

    checks: list[tuple[tuple, set[str]]] = [(("prompt", "user"), template_variables(loaded.recipe.prompt.user))]
    if loaded.recipe.prompt.system:
        checks.append((("prompt", "system"), template_variables(loaded.recipe.prompt.system)))
    if loaded.recipe.prompt.teacher_hint:
        checks.append((("prompt", "teacher_hint"), template_variables(loaded.recipe.prompt.teacher_hint)))
    if config.id_template:
        checks.append((("source", "id_template"), template_variables(config.id_template)))
    for path, variables in checks:
        missing = sorted(variables - columns)
        if missing:
            problems.append(loaded.problem(path, f"template references missing column(s): {', '.join(missing)}; source has: {', '.join(sorted(columns))}"))
    for key in ("id_column", "label_column", "sample_by"):
        column = getattr(config, key)
        if column and column not in columns:
            problems.append(loaded.problem(("source", key), f"column {column!r} not in source; source has: {', '.join(sorted(columns))}"))
    for column in (config.filter or {}):
        if column not in columns:
            problems.append(loaded.problem(("source", "filter", column), f"column {column!r} not in source"))
    if not problems:
        problems += render_problems(loaded, first_row=table.slice(0, 1).to_pylist() if config.format == "perturbqa" else None)
    clashes = sorted((columns - {config.label_column}) & RESERVED_COLUMNS)
    if clashes:
        hint = " (for ground truth, set source.label_column: label)" if "label" in clashes else ""
        problems.append(loaded.problem(("source",), f"source column(s) {', '.join(clashes)} clash with columns curate writes; rename them{hint}"))
    return problems + calibration_source_problems(loaded)


def calibration_source_problems(loaded: LoadedRecipe) -> list[Problem]:
    """calibrate.source: the file is there and has the columns its label, id and the prompt read."""
    calibrate = loaded.recipe.calibrate
    if calibrate is None or calibrate.source is None:
        return []
    config, where = calibrate.source, ("calibrate", "source")
    try:
        columns = set(read_table(config, loaded).column_names)
    except Exception as exc:  # missing file, unreadable, dataset not reachable offline
        return [loaded.problem(where, f"cannot read the calibration source: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]
    prompt = loaded.recipe.prompt
    wanted = {("label_column",): {config.label_column}, ("id_column",): {config.id_column} if config.id_column else set(),
              (): template_variables(prompt.user) | (template_variables(prompt.system) if prompt.system else set())}
    problems = []
    for key, names in wanted.items():
        missing = sorted(n for n in names if n not in columns)
        if missing:
            problems.append(loaded.problem((*where, *key), f"column(s) {', '.join(missing)} not in the calibration source; it has: {', '.join(sorted(columns))}"))
    return problems


def _first_row(loaded: LoadedRecipe) -> dict[str, Any] | None:
    """The source's first row (a streamed read for a dataset; a file is read as `run` reads it)."""
    config = loaded.recipe.source
    if config.dataset is not None:
        import datasets

        stream = datasets.load_dataset(config.dataset, config.config, split=config.split, revision=config.revision, streaming=True)
        return next(iter(stream), None)
    table = read_table(config, loaded)
    return table.slice(0, 1).to_pylist()[0] if table.num_rows else None


def render_problems(loaded: LoadedRecipe, first_row: list[dict] | None = None) -> list[Problem]:
    """Render every template once, in the same sandbox as `run`, against the first source row.

    A template the sandbox refuses only at render time (``{{ ''.__class__ }}``, a huge repetition)
    or one that renders an empty prompt must fail `validate` at its own line, not after the model
    has loaded.
    """
    recipe = loaded.recipe
    try:
        row = first_row[0] if first_row else (None if first_row is not None else _first_row(loaded))
    except Exception as exc:  # noqa: BLE001 - the source checks above report unreadable sources
        return [loaded.problem(("source",), f"cannot read the first row: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")]
    if row is None:
        return []
    env = template_environment()
    templates = [(("prompt", "system"), recipe.prompt.system), (("prompt", "user"), recipe.prompt.user), (("prompt", "teacher_hint"), recipe.prompt.teacher_hint), (("source", "id_template"), recipe.source.id_template)]
    if recipe.critic is not None:
        templates += [(("critic", "system"), recipe.critic.system), (("critic", "prompt"), recipe.critic.prompt)]
    problems = []
    for path, template in templates:
        if template is None:
            continue
        variables = dict(row)
        if path[0] == "critic":  # what the judge gets besides the columns (see pipeline._judge_variables)
            variables.update(question="(the question)", trace="<think>(the trace)</think><answer>(answer)</answer>", answer="(answer)", label=row.get(recipe.source.label_column or "label"))
        try:
            text = env.from_string(template).render(**variables)
        except Exception as exc:  # SecurityError, UndefinedError, TypeError from a filter...
            kind = "refused by the sandbox" if isinstance(exc, jinja2.exceptions.SecurityError) else "fails"
            problems.append(loaded.problem(path, f"template {kind} on the first source row: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
            continue
        if path in (("prompt", "user"), ("critic", "prompt")) and not text.strip():
            problems.append(loaded.problem(path, "template renders an empty prompt on the first source row"))
        if path == ("source", "id_template") and not text.strip():
            problems.append(loaded.problem(path, "template renders an empty id on the first source row"))
    return problems


def peek_columns(loaded: LoadedRecipe) -> list[str]:
    config = loaded.recipe.source
    if config.path is not None:
        path = loaded.resolve_path(config.path)
        fmt = _format_of(path, config.format)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(path).names
        if fmt == "csv":
            import csv

            with open(path, newline="", encoding="utf-8") as handle:
                return next(csv.reader(handle, delimiter="\t" if str(path).endswith(".tsv") else ","))
        with open(path, encoding="utf-8") as handle:
            return list(json.loads(handle.readline()))
    import datasets

    # Streaming reads one row, locally or from the Hub, instead of preparing the whole dataset.
    stream = datasets.load_dataset(config.dataset, config.config, split=config.split, revision=config.revision, streaming=True)
    if stream.features:
        return list(stream.features)
    return list(next(iter(stream)))


def raise_if_problems(problems: list[Problem]) -> None:
    if problems:
        raise RecipeError(problems)


_peek_columns = peek_columns  # the old name
