"""Progress as lines where no progress bar shows.

tqdm draws its bars only on a terminal (``disable=None``); with stderr going to a file, a
pipe or a batch system's log, a long ``pacnet reproduce`` or ``pacnet tune`` would say
nothing for minutes. There :class:`ProgressLines` writes a line to stderr whenever the
count of finished work changes (at most one line every :data:`GAP` seconds) and, while
nothing finishes, a heartbeat every :data:`HEARTBEAT` seconds, e.g.
``pacnet: 12/40 runs done, 3 running, elapsed 1 min 40 s``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from pacnet.experiments.store.status import duration

HEARTBEAT = 30.0
"""Seconds between two lines while nothing finishes."""
GAP = 5.0
"""Seconds at least between two lines on finished work (the last line always comes)."""


def bars_off() -> bool:
    """Whether tqdm's bars are off here: stderr is not a terminal."""
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return True


class ProgressLines:
    """Lines on stderr while a long job works, where no bar shows (:func:`bars_off`).

    ``describe()`` says where the job stands (``"12/40 runs done, 3 running"``); the line
    adds the time elapsed. :meth:`update` is called with a key of the progress (the count
    done, say): a changed key writes a line. A thread writes the heartbeat; it calls
    ``describe`` from that thread, so ``describe`` must be safe to call from another
    thread (a results store is)."""

    def __init__(self, describe: Callable[[], str], enabled: bool | None = None):
        self.describe = describe
        self.enabled = bars_off() if enabled is None else enabled
        self.start = time.monotonic()
        self._last_line = self.start
        self._key: Hashable = None
        self._said = ""  # the last line's text
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="pacnet-progress", daemon=True)

    def say(self, text: str | None = None) -> None:
        """Write a line now: ``text``, or where the job stands."""
        if not self.enabled:
            return
        try:
            text = self.describe() if text is None else text
        except Exception as exc:  # a progress line never stops the job
            text = f"progress unknown ({type(exc).__name__})"
        with self._lock:
            self._said = text
            self._last_line = time.monotonic()
            elapsed = duration(self._last_line - self.start)
            print(f"pacnet: {text}, elapsed {elapsed}", file=sys.stderr, flush=True)

    def update(self, key: Hashable) -> None:
        """A line if ``key`` (e.g. the count done) changed and :data:`GAP` has passed."""
        if not self.enabled or key == self._key:
            return
        if self._key is not None and time.monotonic() - self._last_line < GAP:
            return  # the next change or the heartbeat says it
        self._key = key
        self.say()

    def _beat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT, 1.0)):
            if time.monotonic() - self._last_line >= HEARTBEAT:
                self.say()

    def __enter__(self) -> ProgressLines:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, kind: Any, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        if kind is None and self.enabled:  # where it ended, unless the last line says it
            text = self.describe()
            if text != self._said:
                self.say(text)
