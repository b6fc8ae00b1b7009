"""Test helper: read a child process's output line by line until a line says what we wait for."""
from __future__ import annotations

import subprocess
import time
from typing import Callable


def read_until(proc: subprocess.Popen, done: Callable[[str], bool], timeout: float = 120) -> list[str]:
    """Lines of `proc.stdout` up to and including the first for which `done(line)` is true (or up to
    EOF / `timeout`): the caller asserts on what it got, so a child that died says why."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if done(line):
            break
    return lines
