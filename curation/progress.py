"""Progress: a tqdm bar in a terminal, a plain line every so often in a log.

Outside a terminal (CI, ``nohup``, Slurm, a pipe) a redrawn bar becomes one log line per redraw:
the generation runner refreshes twice a second, so an hour's run wrote thousands of lines. There
``progress_bar`` gives a bar that prints a plain, complete line at most every
``CURATE_PROGRESS_SECONDS`` (default 30) and once more when it closes, whatever the caller's
refresh rate. (``cli.main`` turns off the Hugging Face libraries' own bars in the same situation.)
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

DEFAULT_LOG_SECONDS = 30.0


def log_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("CURATE_PROGRESS_SECONDS", DEFAULT_LOG_SECONDS)))
    except ValueError:
        return DEFAULT_LOG_SECONDS


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LogLineProgress(tqdm):
    """A tqdm bar for logs: newline-terminated lines, at most one per interval, plus the final state."""

    def __init__(self, *args, interval: float | None = None, **kwargs):
        self._interval = log_interval() if interval is None else interval
        self._last_line = -float("inf")
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("disable", False)  # explicit: TQDM_DISABLE (set by cli.main in a log) is for the libraries' bars
        kwargs["ascii"] = True
        kwargs["dynamic_ncols"] = False
        kwargs["ncols"] = 10_000  # no bar is drawn, so the width would only cut the line short
        # a plain line, no bar drawing: "generate: 120/480 traces (25%), 0:01:10 elapsed, 0:03:30 left, 2.1 traces/s, ..."
        if kwargs.get("total"):
            kwargs["bar_format"] = "{desc}: {n_fmt}/{total_fmt} {unit}s ({percentage:.0f}%), {elapsed} elapsed, {remaining} left{postfix}"
        else:
            kwargs["bar_format"] = "{desc}: {n_fmt} {unit}s, {elapsed} elapsed{postfix}"
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        now = time.monotonic()
        if now - self._last_line < self._interval:
            return True
        self._write_line(msg)
        self._last_line = now
        return True

    def _write_line(self, msg=None) -> None:
        line = (msg if msg is not None else self.__str__()).strip()
        if line:
            self.fp.write(line + "\n")
            self.fp.flush()
        self._logged_n = self.n

    def clear(self, nolock=False):
        pass  # a log line is never erased (tqdm.write would otherwise print a carriage return over it)

    def close(self):
        if self.disable:
            return
        if self.n != getattr(self, "_logged_n", None):
            self._write_line()  # the end state, unless the last line already showed it
        self.disable = True  # tqdm's own close would redraw with a carriage return
        self._decr_instances(self)


def progress_bar(**kwargs) -> tqdm:
    """A progress bar fit for where stderr goes: tqdm in a terminal, ``LogLineProgress`` elsewhere."""
    if is_terminal(kwargs.get("file") or sys.stderr):
        return tqdm(**kwargs)
    kwargs.pop("mininterval", None)
    return LogLineProgress(**kwargs)
