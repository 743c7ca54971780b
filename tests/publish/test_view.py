"""`curate view`: the trace report, built from a real run folder and rendered in headless Chromium.

Run folders come from the real pipeline on constructed traces (tests/builders/hub_run.py). The
browser tests need Debian's `chromium` (`make chromium`); they are slow and skip nothing: without
the binary they fail, so CI cannot pass them silently.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curation import run_folder, view
from tests.builders.hub_run import make_run

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<script>document.title='pwned'</script> & </b> \u2028"


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def _hostile_run(tmp_path: Path) -> tuple[Path, str]:
    """A run whose first question's reference trace contains a script tag."""
    run_dir = make_run(tmp_path / "lab", n=12)
    path = run_dir / run_folder.TRACES_FILE
    traces = pq.read_table(path)
    target = traces.column("id")[0].as_py()
    is_target = pc.and_(pc.equal(traces.column("id"), target), traces.column("is_reference"))
    texts = pc.if_else(is_target, pa.scalar(HOSTILE + " " + target), traces.column("text"))
    pq.write_table(traces.set_column(traces.schema.get_field_index("text"), "text", texts), path)
    return run_dir, target


def test_embedded_json_cannot_close_the_script_element() -> None:
    text = view.embed_json({"t": HOSTILE})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": HOSTILE}


def test_cap_per_class_keeps_both_ends_and_is_deterministic(tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab", n=60)
    data = view.build_report_data(run_dir, per_class=6)
    assert data["total_questions"] == 60 and data["embedded_questions"] == 18  # 3 classes x 6
    scored = pq.read_table(run_dir / run_folder.SCORED_FILE).to_pandas()
    for cls, group in scored.groupby("answer"):
        shown = {q["id"] for q in data["questions"] if q["class"] == cls}
        ordered = group.sort_values(["uncertainty", "id"])["id"].tolist()
        assert set(ordered[:2]) <= shown and set(ordered[-2:]) <= shown
    assert view.build_report_data(run_dir, per_class=6)["questions"] == data["questions"]
    # kept first within each class, then by uncertainty
    for cls in {q["class"] for q in data["questions"]}:
        mine = [q for q in data["questions"] if q["class"] == cls]
        assert [q["kept"] for q in mine] == sorted((q["kept"] for q in mine), reverse=True)


def test_cli_writes_the_report_and_rejects_a_non_run(tmp_path) -> None:
    run_dir = make_run(tmp_path / "lab")
    out = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-m", "curation.cli", "view", str(run_dir), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert "http://" not in html.replace("http-equiv", "") and "https://" not in html  # nothing to fetch
    bad = subprocess.run([sys.executable, "-m", "curation.cli", "view", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "no data/scored" in bad.stderr


@pytest.mark.slow
def test_report_renders_in_chromium_with_tokens_and_escaped_script(tmp_path) -> None:
    from PIL import Image

    run_dir, target = _hostile_run(tmp_path)
    page = view.write_report(run_dir)
    dom = _chromium(tmp_path, "--dump-dom", str(page)).stdout
    # the script ran: every question, every class and token spans with logprobs on hover are in the DOM
    scored = pq.read_table(run_dir / run_folder.SCORED_FILE)
    for qid in scored.column("id").to_pylist():
        assert f'data-id="{qid}"' in dom
    for cls in set(scored.column("answer").to_pylist()):
        assert f"<h2 class=\"cls\" data-cls=\"{cls}\"" in dom
    spans = re.findall(r'<span class="tok" title="logprob -?\d+\.\d{4}  p=\d\.\d{3}" style="background: rgba\([^"]+\);">', dom)
    assert len(spans) == sum(pq.read_table(run_dir / run_folder.TRACES_FILE).filter(pc.field("is_reference")).column("n_tokens").to_pylist())
    assert "Embedded 12 of 12 questions" in dom
    # the hostile trace is text: not executed, shown escaped
    assert "<title>curate report</title>" in dom and "pwned</title>" not in dom.split("<body")[0]
    assert "&lt;script&gt;document.title" in dom or "&lt;script&gt;doc" in dom

    shot = tmp_path / "out.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", str(page))
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50  # text, plots and token colours, not a blank page


def test_serve_answers_on_localhost(tmp_path) -> None:
    import urllib.request

    run_dir = make_run(tmp_path / "lab")
    server = subprocess.Popen([sys.executable, "-m", "curation.cli", "view", str(run_dir), "--serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "wrote ..."
        url = re.search(r"http://127\.0\.0\.1:\d+/report\.html", server.stdout.readline()).group(0)
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read() == (run_dir / "report.html").read_bytes()
    finally:
        server.terminate()
        server.wait(timeout=30)
