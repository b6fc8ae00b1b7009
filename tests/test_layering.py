"""The house's one direction of dependency, read from every module of the four rooms.

Rooms: the core (`ganseg/`, the library and its own commands), `training/`, `export/`, `serving/`
(installed as `ganseg.training`, `ganseg.export`, `ganseg.serving`). Allowed arrows: any room to the
core, `serving` to `export` (a server reads what export wrote), and within a room. Nothing else: the
core never reaches into a stage room, `training` and `export` never into each other or `serving`,
`export` never into `serving`. `ganseg.cli` is the entry point on top of the house: its command
table names the command modules of every room, and no module imports it back.

An arrow is an import anywhere in a file (top level or inside a function), an
`importlib.import_module("...")` call, or a string constant that is a ganseg module's name (the
command tables of `ganseg.cli` and `ganseg.export.cli`, `-m ganseg...` command lines): a lazy or
string-named dependency is still a dependency. Besides the rooms, no two modules may import each
other, directly or round a longer loop (a "file circle").

The checker is tested too: a copy of the tree with an upward, a sideways, a string-table and a
circular arrow planted must be refused, each by name.
"""
from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> package it installs as (pyproject.toml [tool.setuptools.package-dir])
ROOMS = {"ganseg": "ganseg", "training": "ganseg.training", "export": "ganseg.export", "serving": "ganseg.serving"}
ENTRY = "ganseg.cli"
ALLOWED = {("serving", "export")}  # besides same room and anything -> core
# bootstrap maps the stage folders to their package names for the import system; those strings are
# names it registers, not modules it uses (its real imports are still checked)
STRINGS_NOT_ARROWS = {"ganseg.bootstrap"}
MODULE_NAME = re.compile(r"ganseg(\.\w+)+")


def modules(root: Path) -> dict[str, Path]:
    """Every module of the four rooms: dotted name -> file."""
    found = {}
    for folder, package in ROOMS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if "__pycache__" in parts or any(p.startswith(".") for p in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def room(module: str) -> str:
    if module == ENTRY:
        return "entry"
    for folder, package in ROOMS.items():
        if folder != "ganseg" and (module == package or module.startswith(package + ".")):
            return folder
    return "core"


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module a dotted name lands in (a name inside a module -> that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def arrows_of(module: str, path: Path, known: dict[str, Path]) -> set[tuple[str, int]]:
    """(module it depends on, line) for every ganseg module this file imports or names."""
    is_package = path.name == "__init__.py"
    out: set[tuple[str, int]] = set()

    def add(name: str | None, line: int) -> None:
        target = _resolve(name, known) if name else None
        # a module's own packages are imported with it: no arrow
        if target and target != module and not module.startswith(target + "."):
            out.add((target, line))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            for alias in node.names:  # `from ganseg import tagged` names the module ganseg.tagged
                full = f"{base}.{alias.name}"
                add(full if full in known else base, node.lineno)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) in
                   ("import_module", "__import__"))):
            add(node.args[0].value, node.lineno)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and module not in STRINGS_NOT_ARROWS
              and MODULE_NAME.fullmatch(node.value) and node.value in known):
            add(node.value, node.lineno)  # command tables, `python -m ganseg...` lines
    return out


def graph(root: Path) -> tuple[dict[str, Path], dict[str, set[tuple[str, int]]]]:
    known = modules(root)
    return known, {m: arrows_of(m, p, known) for m, p in known.items()}


def wrong_arrows(root: Path) -> list[str]:
    """Every arrow against the house's direction, as 'file:line: a -> b (room -> room)'."""
    known, edges = graph(root)
    bad = []
    for a, targets in edges.items():
        ra = room(a)
        for b, line in sorted(targets):
            rb = room(b)
            if ra == "entry" or (rb != "entry" and (ra == rb or rb == "core" or (ra, rb) in ALLOWED)):
                continue
            bad.append(f"{known[a].relative_to(root)}:{line}: {a} -> {b} ({ra} -> {rb})")
    return sorted(bad)


def circles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other round a loop (strongly connected components > 1)."""
    _, edges = graph(root)
    succ = {a: sorted({b for b, _ in t}) for a, t in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred edges
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return sorted(found)


def command_tables(root: Path) -> dict[str, list[str]]:
    """module -> the module strings of its command table(s): dicts of name -> (module, help)."""
    tables: dict[str, list[str]] = {}
    for module, path in modules(root).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict) and node.values and all(
                    isinstance(v, ast.Tuple) and v.elts and isinstance(v.elts[0], ast.Constant)
                    and isinstance(v.elts[0].value, str) and MODULE_NAME.fullmatch(v.elts[0].value)
                    for v in node.values):
                tables.setdefault(module, []).extend(v.elts[0].value for v in node.values)
    return tables


# --------------------------------------------------------------------------------------------
# the tree as it is

def test_every_room_is_read() -> None:
    known = modules(ROOT)
    for folder, package in ROOMS.items():
        assert any(m == package or m.startswith(package + ".") for m in known), folder
    # the painter's subpackage and the command modules of every room are in the scan
    for m in ("ganseg.annotate.propose", "ganseg.training.train_head", "ganseg.export.onnx_cli",
              "ganseg.serving.client", ENTRY):
        assert m in known, m


def test_one_direction_of_dependency() -> None:
    bad = wrong_arrows(ROOT)
    assert not bad, "arrows against the house's direction:\n" + "\n".join(bad)


def test_no_file_circles() -> None:
    loops = circles(ROOT)
    assert not loops, f"modules that import each other: {loops}"


def test_command_tables_are_read_and_every_entry_is_a_command() -> None:
    """The tables name modules by string: each must exist and have the command interface, and the
    layering above reads them (ganseg.cli names every room; export's table stays in export)."""
    known = modules(ROOT)
    tables = command_tables(ROOT)
    assert set(tables) >= {ENTRY, "ganseg.export.cli"}, tables.keys()
    assert {room(m) for m in tables[ENTRY]} == {"core", "training", "export", "serving"}
    assert {room(m) for m in tables["ganseg.export.cli"]} == {"export"}
    for table, names in tables.items():
        for name in names:
            assert name in known, f"{table} names {name}, which does not exist"
            defined = {n.name for n in ast.parse(known[name].read_text()).body if isinstance(n, ast.FunctionDef)}
            assert {"add_arguments", "run"} <= defined, f"{table} names {name}, which is not a command module"


# --------------------------------------------------------------------------------------------
# the checker finds what it must

@pytest.fixture()
def tree(tmp_path) -> Path:
    """A copy of the four rooms' Python files (what the checker reads), to plant arrows in."""
    for folder in ROOMS:
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=lambda d, names: [n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir())
                                                 or n == "__pycache__"])
    return tmp_path


def _plant(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def test_the_copy_is_clean(tree) -> None:
    assert wrong_arrows(tree) == [] and circles(tree) == []


def test_a_planted_upward_import_is_flagged(tree) -> None:
    # a function-level import in a core module, reaching into training (the old painter -> train_head arrow)
    _plant(tree / "ganseg" / "labels.py", "def load_label_png(",
           "def _planted():\n    from ganseg.training.train_head import add_arguments  # noqa\n\n\ndef load_label_png(")
    bad = wrong_arrows(tree)
    assert len(bad) == 1 and "ganseg.labels -> ganseg.training.train_head (core -> training)" in bad[0], bad
    assert bad[0].startswith("ganseg/labels.py:")


def test_planted_sideways_string_and_entry_arrows_are_flagged(tree) -> None:
    _plant(tree / "export" / "onnx_ops.py", "from ganseg.errors import UserError\n",
           "from ganseg.errors import UserError\nfrom ganseg.serving import client  # noqa\n")
    _plant(tree / "export" / "cli.py", '"ganseg.export.tensorrt_build"', '"ganseg.serving.server"')
    _plant(tree / "training" / "annotator.py", "from __future__ import annotations\n",
           "from __future__ import annotations\nimport importlib\n"
           "argtypes = importlib.import_module('ganseg.cli')\n")
    bad = "\n".join(wrong_arrows(tree))
    assert "ganseg.export.onnx_ops -> ganseg.serving.client (export -> serving)" in bad
    assert "ganseg.export.cli -> ganseg.serving.server (export -> serving)" in bad  # the table's string
    assert "ganseg.training.annotator -> ganseg.cli (training -> entry)" in bad
    assert len(bad.splitlines()) == 3, bad


def test_a_planted_file_circle_is_flagged(tree) -> None:
    # the old labels <-> pipeline circle, as a lazy import inside a function
    _plant(tree / "ganseg" / "labels.py", "def load_label_png(",
           "def _planted():\n    from ganseg.pipeline import pre  # noqa\n\n\ndef load_label_png(")
    assert wrong_arrows(tree) == []  # core -> core: the direction is fine, the loop is not
    assert circles(tree) == [["ganseg.labels", "ganseg.pipeline"]]


# --------------------------------------------------------------------------------------------
# the map of the house stays true

def test_architecture_page_picture_and_readme_layout() -> None:
    """docs/architecture.md shows the committed picture and has a paragraph per room; the figure's
    stage rooms match the command table; README's layout table names every folder and every core
    module (by file or by its command)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert "](architecture.png)" in doc and (ROOT / "docs" / "architecture.png").stat().st_size > 10_000
    for room_name in ("The core (`ganseg/`)", "`training/`", "`export/`", "`serving/`", "`model_repository/`",
                      "`benchmarks/`", "`tools/`"):
        assert f"**{room_name}**" in doc, room_name
    import importlib.util

    spec = importlib.util.spec_from_file_location("architecture_figure", ROOT / "tools" / "architecture_figure.py")
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    figure.check_rooms()  # raises when a stage's command moved to another room

    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in layout.splitlines() if line.startswith("| `")}
    for folder in ("ganseg/", "training/", "export/", "serving/", "model_repository/", "benchmarks/", "tools/",
                   "tests/", "docs/"):
        assert folder in rows and (ROOT / folder).is_dir(), folder
    commands = {"evaluate": "score", "quality": "gan-quality"}
    for path in sorted((ROOT / "ganseg").glob("*.py")):
        if path.stem != "__init__":
            assert f"`{path.name}`" in rows["ganseg/"] or f"`{commands.get(path.stem, path.stem)}`" in rows["ganseg/"], \
                f"README's layout table does not name ganseg/{path.name}"
