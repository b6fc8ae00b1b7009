"""`ganseg export {onnx,tensorrt,triton}`: one sub-subcommand per target, each in its own module.

Each target module exposes `add_arguments(parser)` and `run(args) -> int`, like every ganseg
subcommand; only the chosen target's module is imported (`ganseg.subcommands.add_commands`).
"""
from __future__ import annotations

import argparse

from ganseg.subcommands import add_commands, run_module

TARGETS: dict[str, tuple[str, str]] = {
    "onnx": ("ganseg.export.onnx_cli", "ONNX graphs: the distilled UNet, or generator + head (labeler)"),
    "tensorrt": ("ganseg.export.tensorrt_build", "TensorRT engine from an exported ONNX file"),
    "triton": ("ganseg.export.triton_repository", "fill a Triton model repository from a UNet"),
}


def add_arguments(p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    add_commands(p, TARGETS, list(argv or []), dest="target", module_dest="_target_module")


def run(args: argparse.Namespace) -> int:
    return run_module(args, "_target_module")
