"""Input lists, output names and output targets, checked before any work starts.

Why: every stage writes its results at the end (a trained head, a grid of images, a dataset
manifest). An `--out` that cannot be written (an existing file where a folder is expected, a folder
where a file is expected, a read-only or permission-denied place) used to be found only then, after
minutes of training or inversion, and the work was lost. `check_out_dir` / `check_out_file` prove the
target writable first and raise a one-line `UserError` naming the argument, the path and the fix.

The commands that segment photos (`ganseg segment`, `ganseg client`) take the same inputs
(`list_images`: files, and folders expanded to their image files) and name their outputs by one
rule (`output_names`), so the same command line gives the same files whichever path segments it.

Nothing is created: the check writes (and removes) a probe file in the nearest folder that already
exists, so it also catches read-only file systems and, unlike `os.access`, tells the truth for root.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ganseg.errors import BadInput, MissingFile

# what a folder given as input is expanded to (the formats `ganseg.images.decode_rgb` reads)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm")
# files ganseg itself writes next to masks: a folder of results given as input again is not re-segmented
OUTPUT_STEM_ENDINGS = ("_mask", "_overlay")


def _nearest_existing(path: Path, arg: str) -> Path:
    """The deepest existing ancestor of `path` (path itself excluded); it must be a folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"{arg} {path}: {parent} is a file, not a folder; choose an {arg} outside it "
                               f"or move that file away")
            return parent
    return Path(".")  # pragma: no cover - relative paths always reach "."


def _probe_writable(folder: Path, arg: str, path: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".ganseg-write-probe.")
    except OSError as exc:
        raise BadInput(f"{arg} {path}: cannot write in {folder} ({exc.strerror or exc}); choose a writable "
                       f"{arg} or fix its permissions") from None
    os.close(fd)
    os.unlink(probe)


def check_out_dir(path: str | os.PathLike, arg: str = "--out") -> Path:
    """`path` will be a folder of outputs: it must be an existing folder we can write in, or creatable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{arg} {path} is an existing file, but a folder is expected here; pass a folder "
                       f"path (it is created if missing)")
    folder = path if path.is_dir() else _nearest_existing(path, arg)
    _probe_writable(folder, arg, path)
    return path


def check_out_file(path: str | os.PathLike, arg: str = "--out", suffix: str | None = None) -> Path:
    """`path` will be written as one file: it must not be a folder, and its folder must be writable.

    With `suffix` (e.g. ".safetensors"), a path without that suffix is refused, since readers look for it.
    """
    path = Path(path)
    if path.is_dir():
        hint = f" such as {path / ('out' + suffix)}" if suffix else " inside it"
        raise BadInput(f"{arg} {path} is an existing folder, but a file is expected here; pass a file path{hint}")
    if suffix and path.suffix != suffix:
        raise BadInput(f"{arg} {path}: expected a {suffix} file name, e.g. {path.with_suffix(suffix)}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise BadInput(f"{arg} {path}: {parent} is a file, not a folder; choose another {arg}")
    _probe_writable(parent if parent.is_dir() else _nearest_existing(path, arg), arg, path)
    return path


def output_names(paths: list[str]) -> list[str]:
    """One distinct output name per input file (its stem), deterministic; never two the same.

    Inputs sharing a stem (a/0000.png, b/0000.png) are named by their path below their common
    folder, joined by "__" (a__0000, b__0000); the same stem twice in one folder keeps the extension
    (0000_png, 0000_jpg). The same file given twice, or a clash left after that, is a BadInput.

    Clashes are found case-insensitively (macOS and Windows file systems ignore case).
    """
    resolved = [Path(os.path.abspath(p)) for p in paths]
    seen: dict[Path, str] = {}
    for p, r in zip(paths, resolved):
        if r in seen:
            raise BadInput(f"{p} is given twice (also as {seen[r]}); pass each image once")
        seen[r] = p
    names = [r.stem for r in resolved]
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n.lower(), []).append(i)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        common = Path(os.path.commonpath([str(resolved[i].parent) for i in idx]))
        rel = [resolved[i].relative_to(common).parts for i in idx]
        cand = ["__".join(r[:-1] + (Path(r[-1]).stem,)) for r in rel]
        if len({c.lower() for c in cand}) < len(cand):  # same stem in one folder: keep the extension
            cand = ["__".join(r[:-1] + (r[-1].replace(".", "_"),)) for r in rel]
        for i, c in zip(idx, cand):
            names[i] = c
    lowered = [n.lower() for n in names]
    for i, n in enumerate(lowered):
        j = next((j for j in range(i + 1, len(lowered)) if lowered[j] == n), None)
        if j is not None:
            raise BadInput(f"{paths[i]} and {paths[j]} would both be written as {names[i]}_*.png; rename one "
                           f"or process them into different --out folders")
    return names


def some(paths: Sequence[str | os.PathLike], shown: int = 5) -> str:
    """The first `shown` paths, then how many more: what a note prints instead of a long list."""
    head = ", ".join(map(str, paths[:shown]))
    return head + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def list_images(paths: list[str | os.PathLike], note: Callable[[str], None] | None = None) -> list[Path]:
    """The image files to segment: files as given (any name: their content is checked when read),
    folders expanded to the image files directly inside them (by suffix, sorted by name; ganseg's
    own `*_mask.*` / `*_overlay.*` outputs skipped). A missing path or a folder without images is a
    one-line error before any work.

    `note` (e.g. `print`) gets one line naming the files of those folders left out because their
    suffix is not an image format ganseg reads (a photo saved as .heic or .avif used to vanish from
    a run without a word); hidden files (.DS_Store) are not counted."""
    out: list[Path] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file())
            found = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and not f.stem.endswith(OUTPUT_STEM_ENDINGS)]
            skipped += [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES and not f.name.startswith(".")]
            if not found:
                raise BadInput(f"{p}: the folder holds no image files ({' '.join(IMAGE_SUFFIXES)}); pass image "
                               f"files or a folder of them")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MissingFile(f"{p}: no such file or folder; pass image files or folders of images")
    if note is not None and skipped:
        note(f"note: skipped {len(skipped)} file(s) that are not images ganseg reads (by suffix: "
             f"{' '.join(IMAGE_SUFFIXES)}): {some(skipped)}")
    return out


def first_frame_note(paths: Sequence[str | os.PathLike]) -> str | None:
    """One note line for inputs of several frames (`ganseg.images.Photo.animated`), or None: every
    stage reads the first frame only, and says so once per run rather than once per file."""
    if not paths:
        return None
    return (f"note: {len(paths)} image(s) have several frames (animated GIF/PNG/WebP, multi-page TIFF); "
            f"only the first frame was segmented: {some(list(paths))}")


def claim_numbered(folder: str | os.PathLike, stem: str, suffix: str) -> Path:
    """`folder/stem+suffix`, or `stem-2`, `stem-3`, ... : the first name not taken, created empty
    with O_EXCL so that two runs writing into one folder at once never get the same name.

    Why: a per-run summary (the `overlays.png` contact sheet) must not overwrite the one an earlier
    run left in a reused --out folder; the caller then replaces the empty file atomically."""
    folder = Path(folder)
    for n in range(1, 100_000):
        path = folder / f"{stem}{'' if n == 1 else f'-{n}'}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path
    raise BadInput(f"{folder}: {stem}-*{suffix} names are used up; choose another --out folder")
