"""Critic: an LLM judge grades each candidate's kept trace from 1 to 5 (SynthPert).

The judge is just another generator: its prompts are planned as ``TraceRequest``s with their own
fingerprints (role "critic", judge model, rendered judge prompt, greedy params), run by the same
runner (``run_generation``) through any backend, and committed to the run's journal next to the
generated traces. A rerun therefore never pays for a judgement twice, and ``curate score`` can
re-read the grades without any backend (``generate=False``): a judgement missing from the journal
is then simply not graded.

The grade is read from the reply (``parse_grade``) and becomes the ``critic`` column. It is a
quality score (higher is better): ``critic.min_grade`` makes it a filter next to any uncertainty
metric, and ``score.metric: critic`` ranks by it (uncertainty = 5 - grade, perplexity breaking ties).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from curation.recipe.sections import CriticConfig, GeneratorConfig
from curation.types import REFERENCE_INDEX, SamplingParams, StageStats, Trace, TraceRequest

log = logging.getLogger(__name__)

PROVENANCE_KEY = "critic_provenance"
PROMPT_SUFFIX = "#critic"  # journal prompt_id of a judgement: "<question id>#critic"

# Tried in order; within the first pattern that matches, the last match wins (a judge may restate
# the scale, "1 = poor … 5 = excellent", before it commits to a grade).
DEFAULT_GRADE_PATTERNS = (
    r"<grade>\s*\**\s*([1-5])(?:\.0+)?\s*\**\s*</grade>",
    r"\b(?:final\s+)?(?:grade|score|rating)\b\s*(?:is|of|:|=)?\s*[:=]?\s*\**\s*([1-5])(?:\.0+)?\s*\**(?!\d)(?:\s*(?:/|out\s+of)\s*5)?",
    r"(?<![\d.])([1-5])\s*(?:/|out\s+of)\s*5\b",
    r"^\W*([1-5])\W*$",
)


# SynthPert's critic answers <evaluation>excellent|good|average|bad|terrible</evaluation> (with a
# <reasoning> block); the authors accept "excellent,good". Read as 5..1 so min_grade and the
# `critic` column work the same for both scales.
WORD_GRADES = {"excellent": 5, "good": 4, "average": 3, "bad": 2, "terrible": 1}
_WORDS = "|".join(WORD_GRADES)
WORD_PATTERNS = (
    rf"<evaluation>\s*\**\s*({_WORDS})\s*\**\s*\.?\s*</evaluation>",
    rf"^\W*({_WORDS})\W*$",  # a reply that is just the word
)


def parse_word_grade(text: str | None) -> int | None:
    """SynthPert's word scale, 5 (excellent) .. 1 (terrible); the last <evaluation> wins, None when there is none."""
    if not text:
        return None
    for pattern in WORD_PATTERNS:
        matches = list(re.finditer(pattern, text, re.IGNORECASE | re.MULTILINE))
        if matches:
            return WORD_GRADES[matches[-1].group(1).lower()]
    return None


_THINK = re.compile(r"<think>(.*?)(?:</think>|(?=<answer>)|\Z)", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>.*", re.DOTALL | re.IGNORECASE)


def reasoning_block(trace: str) -> str:
    """The reasoning a SynthPert critic judges: the <think> block's content; without one, the text before <answer>."""
    match = _THINK.search(trace or "")
    if match:
        return match.group(1).strip()
    return _ANSWER.sub("", trace or "").strip()


def parse_grade(text: str | None, regex: str | None = None, scale: str = "numeric") -> int | None:
    """The grade 1-5 in a judge's reply, or None when none can be read."""
    if scale == "words":
        return parse_word_grade(text)
    if not text:
        return None
    patterns = (regex,) if regex else DEFAULT_GRADE_PATTERNS
    for pattern in patterns:
        matches = list(re.finditer(pattern, text, re.IGNORECASE | re.MULTILINE))
        if matches:
            last = matches[-1]
            raw = last.group(1) if last.groups() else last.group(0)
            try:
                grade = int(float(raw.strip()))
            except ValueError:
                continue
            if 1 <= grade <= 5:
                return grade
    return None


def generator_config(config: CriticConfig) -> GeneratorConfig:
    """The judge as a generator: one greedy reply per judgement, no samples, no top-k."""
    return GeneratorConfig(
        backend=config.backend,
        model=config.model,
        gguf_file=config.gguf_file,
        revision=config.revision,
        url=config.url,
        api_key=config.api_key,
        api=config.api,
        samples=1,  # unused: only the greedy reference is planned
        reference=True,
        max_new_tokens=config.max_new_tokens,
        stop=list(config.stop),
        top_logprobs=0,
        concurrency=config.concurrency,
        timeout=config.timeout,
        max_retries=config.max_retries,
        device=config.device,
        # a reasoning model as judge (SynthPert's o4-mini): no temperature 0, max_completion_tokens, no logprobs
        logprobs=config.logprobs,
        max_tokens_param=config.max_tokens_param,
        send_sampling=config.send_sampling,
        reasoning_effort=config.reasoning_effort,
    )


@dataclass
class Judgement:
    """What the judge sees for one question."""

    question_id: str
    variables: dict


def judge_messages(config: CriticConfig, variables: dict) -> list[dict[str, str]]:
    from curation.templating import template_environment

    env = template_environment()
    if config.reasoning_only:
        variables = {**variables, "trace": reasoning_block(variables.get("trace") or "")}
    messages = []
    if config.system:
        messages.append({"role": "system", "content": env.from_string(config.system).render(**variables)})
    messages.append({"role": "user", "content": env.from_string(config.prompt).render(**variables)})
    return messages


def plan_judgements(config: CriticConfig, judgements: Sequence[Judgement], identity: str, backend_params: dict) -> list[TraceRequest]:
    """One greedy request per judgement; the fingerprint covers judge model, prompt and settings."""
    params = SamplingParams(True, 1.0, 1.0, config.max_new_tokens, tuple(config.stop), 0)
    requests = []
    for judgement in judgements:
        messages = judge_messages(config, judgement.variables)
        key = {
            "role": "critic",
            "model": identity,
            "messages": messages,
            "params": asdict(params),
            "sample_index": REFERENCE_INDEX,
            "seed": None,
            "backend": backend_params,
        }
        fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        hashable = tuple(tuple(sorted(m.items())) for m in messages)
        requests.append(TraceRequest(judgement.question_id + PROMPT_SUFFIX, hashable, REFERENCE_INDEX, None, params, fingerprint, 1))
    return requests


@dataclass
class CriticResult:
    grades: np.ndarray  # [n] float: 1..5, NaN where not graded or unreadable
    replies: list[str | None]  # [n] the judge's reply text, None where there is none
    stats: dict = field(default_factory=dict)

    def stage(self) -> StageStats:
        """The critic stage's section of stats.json: questions sent to the judge, and why a grade is missing."""
        stage = StageStats(rows_in=int(self.stats.get("requested", 0)))
        for reason in ("failed", "unreadable", "missing"):
            stage.drop(reason, int(self.stats.get(reason, 0)))
        stage.rows_out = stage.rows_in - sum(stage.dropped.values())
        return stage


def grade(
    config: CriticConfig,
    judgements: Sequence[Judgement | None],
    journal_path: Path,
    *,
    generate: bool = True,
    show_progress: bool = True,
) -> CriticResult:
    """Grade every non-None judgement; with ``generate=False`` only read the journal (no backend)."""
    from curation.journal import Journal

    wanted = [(i, j) for i, j in enumerate(judgements) if j is not None]
    n = len(judgements)
    grades = np.full(n, np.nan)
    replies: list[str | None] = [None] * n
    stats = {"requested": len(wanted), "generated": 0, "cached": 0, "failed": 0, "unreadable": 0, "missing": 0}
    if not wanted:
        return CriticResult(grades, replies, stats)
    with Journal(journal_path) as journal:
        if generate:
            from curation.generate import make_backend, run_generation

            gen_config = generator_config(config)
            backend = make_backend(gen_config)
            if hasattr(backend, "section"):
                backend.section = "critic"
            try:
                identity = backend.model_identity()
                # settings under "sampled" shape sampled traces only; a judgement is greedy
                params = {key: value for key, value in dict(backend.fingerprint_params(gen_config)).items() if key != "sampled"}
                requests = plan_judgements(config, [j for _, j in wanted], identity, params)
                run = run_generation(requests, backend, journal, show_progress=show_progress)
                stats.update(generated=run.generated, cached=run.cached, failed=run.failed)
                journal.set_meta(PROVENANCE_KEY, {**backend.provenance(), "identity": identity, "fingerprint_params": params})
            finally:
                asyncio.run(backend.aclose())
        else:
            provenance = journal.get_meta(PROVENANCE_KEY)
            if provenance is None:
                stats["missing"] = len(wanted)
                log.warning("the journal holds no judgements; the critic column stays empty (run `curate run` to grade)")
                return CriticResult(grades, replies, stats)
            identity = provenance.get("identity") or provenance.get("model_id")
            requests = plan_judgements(config, [j for _, j in wanted], identity, provenance.get("fingerprint_params") or {})
        traces: dict[str, Trace] = journal.load(r.fingerprint for r in requests)
    for (i, _), request in zip(wanted, requests):
        trace = traces.get(request.fingerprint)
        if trace is None:
            stats["missing"] += 1  # failed, or (rescoring) never judged
            continue
        replies[i] = trace.text
        value = parse_grade(trace.text, config.grade_regex, config.scale)
        if value is None:
            stats["unreadable"] += 1
        else:
            grades[i] = value
    if not generate:
        stats["cached"] = int(np.isfinite(grades).sum()) + stats["unreadable"]
    return CriticResult(grades, replies, stats)


def eligible(grades: np.ndarray, min_grade: int | None) -> np.ndarray | None:
    """Rows the min-grade filter lets through (None: no filter). No readable grade counts as below."""
    if min_grade is None:
        return None
    with np.errstate(invalid="ignore"):
        return np.isfinite(grades) & (grades >= min_grade)
