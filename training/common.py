"""Helpers shared by the training loops."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def stop_on_signal() -> Iterator[dict]:
    """Turn SIGTERM/SIGINT (a job scheduler, a session ending, Ctrl-C) into a polite stop request.

    Yields a dict whose "signal" becomes the signal number; the loop finishes its step, checkpoints
    and returns instead of dying mid-write. Outside the main thread no handler can be installed, so
    the request simply never comes.
    """
    stop: dict = {"signal": None}
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, lambda sig, frame: stop.update(signal=sig))
                    for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
