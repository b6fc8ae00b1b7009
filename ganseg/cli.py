"""`ganseg` command line: one thin subcommand per stage.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Only the module of the subcommand that runs is imported (`ganseg.subcommands.add_commands`), so
`ganseg --help` and a typo never load torch; `ganseg export` uses the same scheme for its targets.

This module is the top of the house: its table names the command modules of every room (the core,
`ganseg.training`, `ganseg.export`, `ganseg.serving`) by string and nothing imports it back; the
pieces the commands share live below them (`ganseg.argtypes`, `ganseg.subcommands`).
tests/test_layering.py holds both directions.

Errors: a `ganseg.errors.UserError` (bad path, bad argument, corrupt file; the library's
`CheckpointError` & co. derive from it) is printed as one line `ganseg CMD: error: ...` with exit
status 2. Any other exception is a bug (or torch's own complaint about shapes) and keeps its full
traceback, so it can be reported and fixed rather than hidden.
"""
from __future__ import annotations

import argparse
import sys

from ganseg.subcommands import HelpFormatter, add_commands, run_module

# name -> (module, one-line help). Only subcommands that work are listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("ganseg.sample", "sample images, a grid and latents from a generator"),
    "render": ("ganseg.render", "render procedural face portraits with exact part masks"),
    "train-gan": ("ganseg.training.train_gan", "train a StyleGAN2 generator (resumable)"),
    "gan-quality": ("ganseg.quality", "offline GAN quality figures (probe Frechet distance, parts found)"),
    "invert": ("ganseg.invert", "invert real images into the GAN (W / W+ latent optimization)"),
    "annotate": ("ganseg.annotate", "paint the few-shot masks in the browser, with head proposals"),
    "train-head": ("ganseg.training.train_head", "train a few-shot segmentation head on annotated shots"),
    "segment": ("ganseg.segment", "segment real images: with a distilled UNet (fast, deployable) or by "
                                  "GAN inversion + a few-shot head"),
    "eval": ("ganseg.training.eval_protocol", "1/5/10-shot heads: generated shots painted by a simulated annotator "
                                              "(the paper's protocol) or inverted photos (--protocol inverted)"),
    "score": ("ganseg.evaluate", "mIoU of predicted masks against true masks (NAME_mask.png, matched by name)"),
    "synthesize": ("ganseg.synthesize", "auto-shot dataset: GAN images labelled by a head, in resumable shards"),
    "train-unet": ("ganseg.training.train_unet", "train a UNet on a synthesized (or real labelled) dataset"),
    "export": ("ganseg.export.cli", "export to ONNX, TensorRT or a Triton model repository"),
    "serve": ("ganseg.serving.server", "serve a model repository with the real Triton Inference Server"),
    "client": ("ganseg.serving.client", "segment images through a running Triton server"),
}


def main(argv: list[str] | None = None) -> int:
    from ganseg.errors import UserError, one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ganseg", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_commands(parser, COMMANDS, argv)
    args = parser.parse_args(argv)
    try:
        return run_module(args)
    except UserError as exc:
        print(f"ganseg {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"ganseg {args.command}: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)  # a handler may set 128 + its signal: 143 for SIGTERM


if __name__ == "__main__":
    sys.exit(main())
