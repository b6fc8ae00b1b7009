"""`ganseg` command line: one thin subcommand per stage.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `ganseg --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Only subcommands that work are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("ganseg.sample", "sample images, a grid and latents from a generator"),
    "render": ("ganseg.render", "render procedural face portraits with exact part masks"),
    "train-gan": ("ganseg.training.train_gan", "train a StyleGAN2 generator (resumable)"),
    "gan-quality": ("ganseg.quality", "offline GAN quality figures (probe Frechet distance, parts found)"),
    "invert": ("ganseg.invert", "invert real images into the GAN (W / W+ latent optimization)"),
    "train-head": ("ganseg.training.train_head", "train a few-shot segmentation head on annotated shots"),
    "segment": ("ganseg.segment", "segment real images (inversion + few-shot head)"),
    "eval": ("ganseg.evaluate", "1/5/10-shot mIoU table on the held-out rendered test split"),
    "synthesize": ("ganseg.synthesize", "auto-shot dataset: GAN images labelled by a head, in resumable shards"),
    "train-unet": ("ganseg.training.train_unet", "train a UNet on a synthesized (or real labelled) dataset"),
    "export": ("ganseg.export.cli", "export to ONNX, TensorRT or a Triton model repository"),
    "serve": ("ganseg.serving.server", "serve a model repository with the real Triton Inference Server"),
    "client": ("ganseg.serving.client", "segment images through a running Triton server"),
}


class CLIError(Exception):
    """An error the user can fix (bad path, bad argument); printed without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ganseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (CLIError, FileNotFoundError, ValueError) as exc:
        # ValueError covers CheckpointError and bad-argument errors from the library.
        print(f"ganseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
