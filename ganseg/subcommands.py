"""Lazy subcommand tables: the argparse machinery of `ganseg CMD` and `ganseg export TARGET`.

A table maps a command name to (module, one-line help); each module exposes `add_arguments(parser)`
and `run(args) -> int`. Only the module of the command that runs is imported (`add_commands`), so
`ganseg --help` and a typo never load torch. Every option's default is shown in `--help`.

Why a module of its own: `ganseg.cli` (the entry point, whose table names every stage) and
`ganseg.export.cli` (the export targets) both build their parsers with it; a stage importing
`ganseg.cli` would import the module that names it.
"""
from __future__ import annotations

import argparse
import importlib
import inspect


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
