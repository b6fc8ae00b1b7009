"""`ganseg` command line: one thin subcommand per stage.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Only the module of the subcommand that runs is imported (`add_commands`), so `ganseg --help` and a
typo never load torch; `ganseg export` uses the same scheme for its targets.

Errors: a `ganseg.errors.UserError` (bad path, bad argument, corrupt file; the library's
`CheckpointError` & co. derive from it) is printed as one line `ganseg CMD: error: ...` with exit
status 2. Any other exception is a bug (or torch's own complaint about shapes) and keeps its full
traceback, so it can be reported and fixed rather than hidden.

The argparse `type=` helpers here (`positive_int`, ...) turn `--batch 0` into a usage error at
parse time, before anything is loaded.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys

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


def _shows_default(action: argparse.Action) -> bool:
    return not (action.default is None or action.default is False or action.default is argparse.SUPPRESS
                or action.required or "%(default)" in (action.help or "")
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (options without a meaningful default say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return f"{action.help} (default: %(default)s)" if action.help and _shows_default(action) else action.help


def _help_for_defaults(p: argparse.ArgumentParser) -> None:
    """argparse prints no help line at all for an option without help text: give those one showing
    their default, so `--batch BATCH (default: 8)` appears too."""
    for action in p._actions:
        if not action.help and _shows_default(action):
            action.help = "(default: %(default)s)"


# --------------------------------------------------------------------------------------------
# argparse types: reject bad numbers at parse time, with argparse's usual one-line usage error

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


# --------------------------------------------------------------------------------------------
# Lazy subcommands

def _chosen(argv: list[str], names) -> str | None:
    """The first argument that is not an option, if it names a subcommand."""
    for a in argv:
        if not a.startswith("-"):
            return a if a in names else None
    return None


def add_commands(parser: argparse.ArgumentParser, table: dict[str, tuple[str, str]], argv: list[str],
                 dest: str = "command", module_dest: str = "_module") -> None:
    """A subparser per table entry; only the one named in `argv` imports its module for its options.

    A module's `add_arguments(p)` may take a second parameter: the arguments after its name, for a
    module that itself has lazy sub-subcommands (`ganseg export TARGET`).
    """
    sub = parser.add_subparsers(dest=dest, required=True, metavar=dest.upper())
    chosen = _chosen(argv, table)
    for name, (module, help_text) in table.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        p.set_defaults(**{module_dest: module})
        if name != chosen:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                parser.exit(2, f"{parser.prog} {name}: error: not available in this install "
                               f"(module {exc.name} is missing)\n")
            raise
        if len(inspect.signature(mod.add_arguments).parameters) >= 2:
            mod.add_arguments(p, argv[argv.index(name) + 1:])
        else:
            mod.add_arguments(p)
        _help_for_defaults(p)


def run_module(args: argparse.Namespace, module_dest: str = "_module") -> int:
    return int(importlib.import_module(getattr(args, module_dest)).run(args) or 0)


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
