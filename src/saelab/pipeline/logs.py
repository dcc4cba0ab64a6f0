"""Logging to the console (rich) and to the run folder (``run.log``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.logging import RichHandler

_FILE_HANDLER_NAME = "saelab-run-file"


def setup_logging(run_dir: Path | None = None, level: int = logging.INFO) -> None:
    """Send saelab's logs to the console and, when given, append them to ``run_dir/run.log``."""
    root = logging.getLogger("saelab")
    root.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        console = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        console.setLevel(level)
        root.addHandler(console)
    for h in list(root.handlers):
        if h.get_name() == _FILE_HANDLER_NAME:
            root.removeHandler(h)
            h.close()
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
        fh.set_name(_FILE_HANDLER_NAME)
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)


class StageTimer:
    """Wall-clock seconds per named stage, accumulated and exclusive.

    Stages nest (the probe stage reads activations and encodes SAEs as it goes, in a background
    thread): while an inner stage runs, the outer one's clock is paused, so the seconds of all
    stages add up to the wall time spent inside any of them. Thread-safe.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[str] = []
        self._since = 0.0
        self._lock = threading.Lock()

    def _charge(self, now: float) -> None:
        if self._stack:
            top = self._stack[-1]
            self.seconds[top] = self.seconds.get(top, 0.0) + now - self._since
        self._since = now

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        with self._lock:
            self._charge(time.perf_counter())
            self._stack.append(stage)
        try:
            yield
        finally:
            with self._lock:
                self._charge(time.perf_counter())
                self._stack.remove(stage)  # the innermost entry of this stage
