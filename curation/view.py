"""`curate view RUN_DIR`: one self-contained HTML page showing what the filter kept and dropped.

Reads only the run folder's public contract (the `scored` split under data/ and the `traces`
config), shard by shard with pyarrow, never the journal. Questions to embed are chosen first
from the scored table's small columns (per class: the most and least certain plus a
deterministic sample), then only those questions' rows and traces are read, so a large run
gives a bounded page. Data goes into the page as JSON in a <script type="application/json">
block (with <, >, & and U+2028/9 escaped) and is rendered with textContent only, so a trace
containing markup is shown as text, never run.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curation.run_folder import REPORT_FILE, RunFolder

UNPARSED = "(unparsed)"
# Small per-question columns used to choose what to embed; the rest is read for the chosen ids only.
_SELECTION_COLUMNS = ["id", "answer", "uncertainty", "kept"]
# Columns of scored that are not metric values even though they are numbers.
_NOT_METRICS = {"uncertainty", "agreement", "n_samples", "n_unparsed", "kept_trace", "kept", "label"}


class ViewError(ValueError):
    pass


def choose_questions(table: pa.Table, per_class: int) -> tuple[list[str], dict[str, int]]:
    """Ids to embed: per class, the per_class//3 most and least certain and a deterministic sample of the rest."""
    answers = [a if a is not None else UNPARSED for a in table.column("answer").to_pylist()]
    ids = table.column("id").to_pylist()
    unc = table.column("uncertainty").to_pylist()
    by_class: dict[str, list[tuple[float, str]]] = {}
    for qid, cls, u in zip(ids, answers, unc):
        by_class.setdefault(cls, []).append((math.inf if u is None or u != u else u, qid))
    chosen: list[str] = []
    totals = {}
    for cls, rows in sorted(by_class.items()):
        totals[cls] = len(rows)
        rows.sort()
        if len(rows) <= per_class:
            chosen += [qid for _, qid in rows]
            continue
        edge = per_class // 3
        head, tail, middle = rows[:edge], rows[len(rows) - edge :], rows[edge : len(rows) - edge]
        # A hash of the id, not an RNG: the same run always shows the same sample.
        middle.sort(key=lambda r: hashlib.sha256(r[1].encode()).hexdigest())
        chosen += [qid for _, qid in head + middle[: per_class - 2 * edge] + tail]
    return chosen, totals


def _histogram_png(table: pa.Table) -> str | None:
    """Uncertainty histograms per class, kept vs dropped, as a base64 PNG (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    answers = np.array([a if a is not None else UNPARSED for a in table.column("answer").to_pylist()], dtype=object)
    unc = table.column("uncertainty").to_numpy(zero_copy_only=False).astype(float)
    kept = table.column("kept").to_numpy(zero_copy_only=False).astype(bool)
    finite = np.isfinite(unc)
    if not finite.any():
        return None
    classes = sorted(set(answers))
    fig, axes = plt.subplots(len(classes), 1, figsize=(7, 1.8 * len(classes) + 0.6), squeeze=False)
    bins = np.histogram_bin_edges(unc[finite], bins=30)
    for ax, cls in zip(axes[:, 0], classes):
        mine = (answers == cls) & finite
        ax.hist(unc[mine & kept], bins=bins, color="#2b8a3e", alpha=0.8, label="kept")
        ax.hist(unc[mine & ~kept], bins=bins, color="#c92a2a", alpha=0.5, label="dropped")
        ax.set_title(f"{cls} ({int(mine.sum())})", fontsize=9)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("uncertainty (higher = less certain)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _token_pieces(text: str, logprobs: list[float], tokens: list[str] | None) -> tuple[list[str], bool]:
    """Token strings for the trace: the recorded ones, else an even split of the text (marked approximate)."""
    if tokens is not None and len(tokens) == len(logprobs):
        return list(tokens), True
    n = len(logprobs)
    if n == 0:
        return [], False
    bounds = [round(i * len(text) / n) for i in range(n + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(n)], False


def build_report_data(run_dir: Path, per_class: int = 30) -> dict:
    """The page's data: the chosen questions (their scored rows and traces), per-class totals and the plots."""
    # here, not at the top: every `curate` command builds the view subcommand's parser, and
    # pyarrow.dataset brings pandas with it (0.3-0.9 s of start-up for commands that never need it)
    import pyarrow.dataset as ds

    folder = RunFolder(run_dir)
    scored_ds = _scored_dataset(folder, run_dir)
    names = scored_ds.schema.names
    small = scored_ds.to_table(columns=_SELECTION_COLUMNS)
    chosen, totals = choose_questions(small, per_class)
    wanted = [c for c in names if c not in ("completion", "teacher_prompt")]
    rows = scored_ds.to_table(columns=wanted, filter=ds.field("id").isin(chosen)).to_pylist()
    metric_names = [
        f.name for f in scored_ds.schema if pa.types.is_floating(f.type) and f.name not in _NOT_METRICS
    ]
    traces_by_id, approximate = _chosen_traces(folder, chosen)
    has_label = "label" in names
    questions = [_question(row, traces_by_id.get(row["id"], []), metric_names, has_label) for row in rows]
    questions.sort(key=lambda q: (q["class"], not q["kept"], q["uncertainty"] if q["uncertainty"] is not None else math.inf))
    kept_total = pc.sum(small.column("kept")).as_py() or 0
    return {
        "run": run_dir.resolve().name,
        "total_questions": small.num_rows,
        "kept_questions": int(kept_total),
        "embedded_questions": len(questions),
        "per_class_cap": per_class,
        "class_totals": totals,
        "has_labels": has_label,
        "approximate_tokens": approximate,
        "questions": questions,
        "plots": _plots(folder, small),
    }


def _scored_dataset(folder: RunFolder, run_dir: Path):
    """The scored split as a pyarrow dataset, once it is there with the columns questions are chosen by."""
    scored_ds = folder.dataset("scored")
    if scored_ds is None:
        raise ViewError(f"{run_dir} has no data/scored-*.parquet: run `curate run` first")
    missing = [c for c in _SELECTION_COLUMNS if c not in scored_ds.schema.names]
    if missing:
        raise ViewError(f"{run_dir}: the scored split lacks column(s) {', '.join(missing)}")
    return scored_ds


def _chosen_traces(folder: RunFolder, chosen: list[str]) -> tuple[dict[str, list[dict]], bool]:
    """The chosen questions' traces as the page shows them, by question id; and whether any token split is approximate."""
    import pyarrow.dataset as ds  # see build_report_data

    traces_by_id: dict[str, list[dict]] = {}
    traces_ds = folder.dataset("traces")
    approximate = False
    if traces_ds is None or not chosen:
        return traces_by_id, approximate
    tcols = [
        c for c in ("id", "sample_index", "is_reference", "text", "thinking", "answer_start", "alignment", "answer", "token_logprobs", "tokens", "finish_reason")
        if c in traces_ds.schema.names
    ]
    # One shard at a time: the filter is applied as the shard streams, so memory follows a shard, not the run.
    for batch in traces_ds.to_batches(columns=tcols, filter=ds.field("id").isin(chosen), fragment_readahead=1, batch_readahead=1):
        for t in batch.to_pylist():
            trace, exact = _trace(t)
            approximate |= bool(trace["tokens"]) and not exact
            traces_by_id.setdefault(t["id"], []).append(trace)
    return traces_by_id, approximate


def _trace(t: dict) -> tuple[dict, bool]:
    """One trace row as the page shows it, and whether its token pieces are the recorded tokens (else an even split)."""
    # Only the reference trace is shown token by token; samples carry text and answer (a 9x smaller page).
    lps = [float(x) for x in (t.get("token_logprobs") or [])] if t.get("is_reference") else []
    thinking = t.get("thinking")
    # without token strings the even split runs over the whole output, thinking first
    whole = f"<think>{thinking}</think>{t.get('text') or ''}" if thinking is not None else t.get("text") or ""
    pieces, exact = _token_pieces(whole, lps, t.get("tokens"))
    # where the answer starts in the pieces: exact from the trace, unknown (None) when approximate
    answer_start = t.get("answer_start") if exact else (0 if thinking is None else None)
    trace = {
        "sample_index": t.get("sample_index"),
        "is_reference": bool(t.get("is_reference")),
        "text": t.get("text") or "",
        "thinking": thinking,
        "answer_start": answer_start,
        "alignment": t.get("alignment") or "ok",
        "answer": t.get("answer"),
        "finish_reason": t.get("finish_reason"),
        "tokens": pieces,
        "logprobs": [round(x, 4) for x in lps],
    }
    return trace, exact


def _question(row: dict, traces: list[dict], metric_names: list[str], has_label: bool) -> dict:
    """One scored row as the page shows it, with its traces (the reference first)."""
    answer = row.get("answer")
    label = row.get("label") if has_label else None
    return {
        "id": row["id"],
        "class": answer if answer is not None else UNPARSED,
        "answer": answer,
        "label": label,
        "correct": None if label is None or answer is None else str(label) == str(answer),
        "kept": bool(row.get("kept")),
        "drop_reason": row.get("drop_reason"),
        "uncertainty": _num(row.get("uncertainty")),
        "agreement": _num(row.get("agreement")),
        "majority_answer": row.get("majority_answer"),
        "prompt": row.get("prompt") or [],
        "metrics": {m: _num(row.get(m)) for m in metric_names},
        "traces": sorted(traces, key=lambda t: (not t["is_reference"], t["sample_index"] or 0)),
    }


def _plots(folder: RunFolder, small: pa.Table) -> dict[str, str]:
    """Plot title -> base64 PNG: the uncertainty histograms first (when there are rows), then the run's eval plots."""
    plots = {p.name: base64.b64encode(p.read_bytes()).decode() for p in sorted(folder.eval_dir.glob("*.png"))}
    histogram = _histogram_png(small) if small.num_rows else None
    if histogram:
        plots = {"uncertainty histograms": histogram, **plots}
    return plots


def _num(value):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)


def embed_json(data: dict) -> str:
    """JSON safe inside a <script> element: no '</script>', no '<!--', no line terminators JS chokes on."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def render_html(data: dict) -> str:
    return _PAGE.replace("__DATA__", embed_json(data))


def write_report(run_dir: str | Path, output: str | Path | None = None, per_class: int = 30) -> Path:
    run_dir = Path(run_dir)
    if per_class < 1:
        raise ViewError("--per-class must be at least 1")
    out = Path(output) if output else run_dir / REPORT_FILE
    html = render_html(build_report_data(run_dir, per_class))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def serve(path: Path, port: int) -> None:
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving http://127.0.0.1:{server.server_address[1]}/{path.name}  (Ctrl-C to stop)", flush=True)
        server.serve_forever()


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>curate report</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em}.note{background:#fff3bf;padding:.5em;border-radius:4px}
#filters{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ccc}
#filters select,#filters input{margin-right:.8em}
.q{background:#fff;border:1px solid #ddd;border-radius:4px;margin:.5em 0;padding:.5em}
.q.dropped{border-left:4px solid #c92a2a}.q.kept{border-left:4px solid #2b8a3e}
.q summary{cursor:pointer}.badge{font-size:.8em;padding:0 .4em;border-radius:3px;margin-left:.4em;background:#eee}
.tokens{white-space:pre-wrap;font-family:monospace;line-height:1.6}
.tok{border-radius:2px}
table.metrics td{padding:0 .6em;font-family:monospace}
.sample{font-family:monospace;white-space:pre-wrap;font-size:.85em;border-top:1px dashed #ccc;padding:.3em 0}
.plots img{max-width:45%;margin:.3em;border:1px solid #ddd;background:#fff}
details.thinking{background:#f3f0ff;border-radius:4px;padding:.2em .5em;margin:.3em 0}
details.thinking summary{color:#5f3dc4}
.answer-span{border-left:3px solid #2b8a3e;padding-left:.4em}
h2.cls{margin-top:1.2em}
</style></head>
<body>
<h1 id="title"></h1>
<p id="summary"></p>
<p class="note" id="cap"></p>
<div class="plots" id="plots"></div>
<div id="filters">
 class <select id="f-class"><option value="">all</option></select>
 status <select id="f-kept"><option value="">all</option><option value="kept">kept</option><option value="dropped">dropped</option></select>
 answer <select id="f-correct"><option value="">all</option><option value="right">right</option><option value="wrong">wrong</option></select>
 search <input id="f-text" type="search" placeholder="text in prompt or traces">
 <span id="shown"></span>
</div>
<div id="questions"></div>
<script type="application/json" id="report-data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("report-data").textContent);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
function fmt(x) { return x === null || x === undefined ? "–" : (Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(4)); }
const FOLD_CHARS = 600;  // thinking longer than this starts folded
function thinkingBlock(text, tokenDiv, count) {
  const box = el("details", null, "thinking");
  box.open = text.length <= FOLD_CHARS;
  box.appendChild(el("summary", "Thinking (" + (count === null ? text.length + " characters" : count + " tokens") + ")"));
  box.appendChild(tokenDiv || el("div", text, "tokens"));
  return box;
}
function colour(lp) { const p = Math.exp(lp); const hue = Math.round(120 * p); return "hsla(" + hue + ",80%,60%," + (0.15 + 0.6 * (1 - p)).toFixed(2) + ")"; }
document.getElementById("title").textContent = "curate report: " + data.run;
document.getElementById("summary").textContent = data.total_questions + " questions, " + data.kept_questions + " kept. Classes: " + Object.entries(data.class_totals).map(([c, n]) => c + " (" + n + ")").join(", ") + ".";
document.getElementById("cap").textContent = "Embedded " + data.embedded_questions + " of " + data.total_questions + " questions: up to " + data.per_class_cap + " per class (the most and the least certain, plus a deterministic sample)." + (data.approximate_tokens ? " Token boundaries are approximate: this run recorded no token strings, so each trace's text is split evenly over its tokens." : "");
const plots = document.getElementById("plots");
for (const [name, b64] of Object.entries(data.plots)) { const img = el("img"); img.alt = name; img.title = name; img.src = "data:image/png;base64," + b64; plots.appendChild(img); }
const fClass = document.getElementById("f-class");
for (const c of Object.keys(data.class_totals)) { const o = el("option", c); o.value = c; fClass.appendChild(o); }
if (!data.has_labels) document.getElementById("f-correct").disabled = true;
const root = document.getElementById("questions");
const cards = [];
let currentClass = null;
for (const q of data.questions) {
  const firstOfClass = q.class !== currentClass;
  if (firstOfClass) { currentClass = q.class; const h = el("h2", q.class + " (" + data.class_totals[q.class] + " questions)", "cls"); h.dataset.cls = q.class; root.appendChild(h); }
  const card = el("details", null, "q " + (q.kept ? "kept" : "dropped"));
  card.dataset.id = q.id; card.dataset.cls = q.class; card.open = firstOfClass;
  const sum = el("summary");
  sum.appendChild(el("b", q.id));
  sum.appendChild(el("span", q.kept ? "kept" : "dropped: " + (q.drop_reason || "?"), "badge"));
  sum.appendChild(el("span", "uncertainty " + fmt(q.uncertainty), "badge"));
  if (q.correct !== null) sum.appendChild(el("span", q.correct ? "right" : "wrong", "badge"));
  card.appendChild(sum);
  const body = el("div");
  body.appendChild(el("h4", "Prompt"));
  for (const m of q.prompt) body.appendChild(el("div", m.role + ": " + m.content, "sample"));
  body.appendChild(el("p", "answer: " + (q.answer === null ? "(unparsed)" : q.answer) + (data.has_labels ? "   label: " + (q.label === null ? "–" : q.label) : "") + "   majority: " + (q.majority_answer || "–") + "   agreement: " + fmt(q.agreement)));
  const table = el("table", null, "metrics");
  for (const [m, v] of Object.entries(q.metrics)) { const tr = el("tr"); tr.appendChild(el("td", m)); tr.appendChild(el("td", fmt(v))); table.appendChild(tr); }
  body.appendChild(table);
  const ref = q.traces.find(t => t.is_reference);
  if (ref) {
    body.appendChild(el("h4", "Reference trace (token colour = probability; hover for logprob)" + (ref.alignment !== "ok" ? " [" + ref.alignment + "]" : "")));
    const tokenSpans = (from, to) => { const div = el("div", null, "tokens"); for (let i = from; i < to; i++) { const s = el("span", ref.tokens[i], "tok"); const lp = ref.logprobs[i]; s.style.background = colour(lp); s.title = "logprob " + lp.toFixed(4) + "  p=" + Math.exp(lp).toFixed(3); div.appendChild(s); } return div; };
    if (ref.thinking !== null && ref.thinking !== undefined) {
      // the thinking and the answer apart; long thinking folded
      const split = ref.answer_start === null || ref.answer_start === undefined ? null : Math.min(ref.answer_start, ref.tokens.length);
      body.appendChild(thinkingBlock(ref.thinking, split === null ? null : tokenSpans(0, split), split === null ? null : split));
      const answer = split === null ? el("div", ref.text, "tokens") : tokenSpans(split, ref.tokens.length);
      answer.classList.add("answer-span");
      body.appendChild(el("h4", "Answer"));
      body.appendChild(answer);
      if (split === null && ref.tokens.length) {  // the answer's tokens were not found: every token, unsplit
        body.appendChild(el("h4", "All output tokens (the answer span could not be located in them)"));
        body.appendChild(tokenSpans(0, ref.tokens.length));
      }
    } else {
      body.appendChild(tokenSpans(0, ref.tokens.length));
    }
  }
  const samples = q.traces.filter(t => !t.is_reference);
  if (samples.length) {
    const agree = samples.filter(t => t.answer !== null && t.answer === q.answer).length;
    body.appendChild(el("h4", samples.length + " samples, " + agree + " agree with the reference answer"));
    for (const t of samples) {
      const line = el("div", "#" + t.sample_index + " [" + (t.answer === null ? "(unparsed)" : t.answer) + "] " + (t.alignment === "unfinished" ? "(thinking never closed) " : "") + t.text, "sample");
      if (t.thinking !== null && t.thinking !== undefined) line.prepend(thinkingBlock(t.thinking, null, null));
      body.appendChild(line);
    }
  }
  card.appendChild(body);
  root.appendChild(card);
  const haystack = (q.id + " " + q.prompt.map(m => m.content).join(" ") + " " + q.traces.map(t => (t.thinking || "") + " " + t.text).join(" ")).toLowerCase();
  cards.push({q, card, haystack});
}
function applyFilters() {
  const cls = fClass.value, kept = document.getElementById("f-kept").value, correct = document.getElementById("f-correct").value;
  const text = document.getElementById("f-text").value.toLowerCase();
  let shown = 0;
  for (const {q, card, haystack} of cards) {
    const ok = (!cls || q.class === cls) && (!kept || (kept === "kept") === q.kept) && (!correct || (q.correct !== null && (correct === "right") === q.correct)) && (!text || haystack.includes(text));
    card.style.display = ok ? "" : "none"; if (ok) shown++;
  }
  for (const h of root.querySelectorAll("h2.cls")) h.style.display = !cls || h.dataset.cls === cls ? "" : "none";
  document.getElementById("shown").textContent = shown + " shown";
}
for (const id of ["f-class", "f-kept", "f-correct", "f-text"]) document.getElementById(id).addEventListener("input", applyFilters);
applyFilters();
</script>
</body></html>
"""
