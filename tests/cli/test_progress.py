"""Progress outside a terminal: plain lines at an interval, not a redraw per refresh."""

import io
import time

from curation.progress import LogLineProgress, progress_bar


def test_a_log_gets_a_line_per_interval_and_the_end_state_however_often_the_caller_refreshes():
    log = io.StringIO()
    bar = progress_bar(total=200, desc="generate", unit="trace", file=log, mininterval=0.5)
    assert isinstance(bar, LogLineProgress)  # StringIO is not a terminal
    bar._interval = 0.05
    started = time.monotonic()
    for done in range(1, 201):
        bar.n = done
        bar.set_postfix_str(", 3 in flight", refresh=True)  # as the runner's ticker does
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and all(line.startswith("generate: ") for line in lines)
    assert len(lines) <= elapsed / 0.05 + 2 and len(lines) < 200  # bounded by time, not by refreshes
    assert lines[0].startswith("generate: 0/200 traces (0%)")
    assert lines[-1].startswith("generate: 200/200 traces (100%)") and "3 in flight" in lines[-1]


def test_the_default_interval_is_thirty_seconds_and_can_be_set(monkeypatch):
    log = io.StringIO()
    bar = progress_bar(total=10, desc="x", unit="trace", file=log)
    for done in range(1, 11):
        bar.n = done
        bar.refresh()
    bar.close()
    assert len(log.getvalue().splitlines()) == 2  # the start, then the end
    monkeypatch.setenv("CURATE_PROGRESS_SECONDS", "0")
    log = io.StringIO()
    bar = progress_bar(total=3, desc="x", unit="trace", file=log)
    for done in range(1, 4):
        bar.n = done
        bar.refresh()
    bar.close()
    assert len(log.getvalue().splitlines()) == 4


def test_messages_between_lines_do_not_erase_anything():
    from tqdm.auto import tqdm

    log = io.StringIO()
    bar = progress_bar(total=2, desc="generate", unit="trace", file=log)
    tqdm.write("endpoint http://a rests for 5 s", file=log)
    bar.n = 2
    bar.close()
    assert "\r" not in log.getvalue() and "endpoint http://a rests for 5 s\n" in log.getvalue()
