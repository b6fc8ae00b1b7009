"""argparse `type=` helpers of every ganseg command: `--batch 0` or `--lr nan` is a one-line usage
error at parse time, before anything is loaded.

Why a module of its own: every command module (core, training/, export/, serving/) builds its parser
with these, and the command modules sit below the `ganseg` entry point (`ganseg.cli`), which names
them all; taking the types from `ganseg.cli` made every stage import the module that imports it.
"""
from __future__ import annotations

import argparse



def _number(kind, text: str, ok, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or not ok(value):  # NaN, inf
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts, steps)."""
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, thresholds)."""
    return _number(float, text, lambda v: v > 0, "a number > 0")


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(float, text, lambda v: v >= 0, "a number >= 0")


def finite_float(text: str) -> float:
    """argparse type: any finite number (truncation psi may be 0, negative or above 1)."""
    return _number(float, text, lambda v: True, "a finite number")
