"""`ganseg export {onnx,tensorrt,triton}`: one sub-subcommand per target, each in its own module.

Each target module exposes `add_arguments(parser)` and `run(args) -> int`, like every ganseg
subcommand; only the chosen target's module is imported.
"""
from __future__ import annotations

import argparse
import importlib

TARGETS: dict[str, tuple[str, str]] = {
    "onnx": ("ganseg.export.onnx_export", "ONNX graphs: the distilled UNet, or generator + head (labeler)"),
    "tensorrt": ("ganseg.export.tensorrt_build", "TensorRT engine from an exported ONNX file"),
    "triton": ("ganseg.serving.repository", "fill a Triton model repository from a UNet"),
}


def add_arguments(p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    sub = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, (module, help_text) in TARGETS.items():
        q = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        q.set_defaults(_target_module=module)
        if argv is None or name in argv:  # import only the target that runs (all for --help of export)
            importlib.import_module(module).add_arguments(q)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._target_module).run(args) or 0)
