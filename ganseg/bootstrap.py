"""Import ganseg from a plain copy of the source tree, without `pip install` (the GPU machine's case).

The user's layout keeps the stage code in top-level folders (`training/`, `export/`, `serving/`) that
the install maps into the package as `ganseg.training`, `ganseg.export`, `ganseg.serving`
(pyproject's `package-dir`). A copy of the tree that was never installed has no such mapping, so
`import ganseg.training` fails there even with the root on `sys.path` — which is what broke the first
H200 run (../shared/results/h200-2026-11-30). `install()` recreates the mapping for this process with a
meta-path finder, and puts the root on `PYTHONPATH` so child processes import ganseg from the same copy;
children that need the stage packages start through this module:

    python -m ganseg.bootstrap -m ganseg.cli train-gan ...      # a module, as `python -m`
    python -m ganseg.bootstrap benchmarks/gpu.py --out ...      # a script, as `python script.py`

Nothing is written anywhere and no top-level module is added: in an installed ganseg (no stage
folders beside the package) `install()` does nothing, and in an editable install of the same tree it
maps the same folders the install maps.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the install's package-dir mapping (pyproject.toml [tool.setuptools.package-dir])
STAGE_FOLDERS = {"ganseg.training": "training", "ganseg.export": "export", "ganseg.serving": "serving"}


class StageFinder(importlib.abc.MetaPathFinder):
    """Finds `ganseg.<stage>` in `<root>/<stage folder>`; their submodules then load through the
    package's `__path__` like any other."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        folder = STAGE_FOLDERS.get(fullname)
        if folder is None:
            return None
        init = self.root / folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def _maps_to(name: str, folder: Path) -> bool:
    """Whether `name` already imports from `folder` (without importing it)."""
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # ganseg itself not importable yet
        return False
    return spec is not None and spec.origin is not None and Path(spec.origin).parent == folder


def install(root: Path = ROOT) -> bool:
    """Make `ganseg.training/.export/.serving` importable from `root` here and in child processes.

    Returns False (and changes nothing) when an install already provides them: `root` holds no
    stage folders (a regular install), or they already import from `root` (an editable install)."""
    if not all((root / folder / "__init__.py").is_file() for folder in STAGE_FOLDERS.values()):
        return False
    if all(_maps_to(name, root / folder) for name, folder in STAGE_FOLDERS.items()):
        return False
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if not any(isinstance(f, StageFinder) and f.root == root for f in sys.meta_path):
        sys.meta_path.insert(0, StageFinder(root))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in paths if p])
    return True


def main(argv: list[str] | None = None) -> None:
    """`python -m ganseg.bootstrap (-m MODULE | SCRIPT) ARGS...`: run it with the mapping installed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        raise SystemExit("usage: python -m ganseg.bootstrap (-m MODULE | SCRIPT) [ARGS...]")
    install()
    if argv[0] == "-m":
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        script = str(Path(argv[0]).resolve())
        sys.argv = [script] + argv[1:]
        sys.path.insert(0, str(Path(script).parent))  # as `python script.py` does
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
