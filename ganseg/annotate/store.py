"""The shots folder as `ganseg annotate` sees it: images, their masks (with versions and numbered
backups) and the class list.

Why a store of its own: the browser only ever sends whole masks, and several things can go wrong
between two saves that the page cannot see — another tab (or a paint program) saved the same mask,
the server was killed half-way, someone edited labels.json by hand. Everything that touches files
goes through here, under one lock, so these checks are made in one place:

- A mask's *version* is the SHA-1 of its file (``"none"`` when absent). A save names the version it
  was edited from; a different version on disk means someone else saved since, and the save is
  refused (`StaleSave`) instead of silently dropping their work.
- A saved mask is never overwritten without its previous bytes kept as
  ``mask_history/NAME_mask.N.png`` (N = 1, 2, ...). Backups live in a sub-folder so that neither
  `ganseg train-head` (which reads ``seedNNNN_mask.png``) nor ``--real`` (which globs ``*.png``) sees them.
- Every file is written with `ganseg.images.write_atomic` (temp file + rename): a server killed
  mid-save leaves the old mask or the new one, never half of one.
- Masks are read and written with `ganseg.labels` (indexed PNG, pixel value = class index) and the
  class list with `read_labels_json` / `write_labels_json`: exactly what `train-head` reads.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ganseg.errors import BadInput, MissingFile, UserError
from ganseg.images import write_atomic
from ganseg.labels import (CLASS_NAMES, LabelFileError, LabelSet, LabelFileMissing, load_label_png, palette_for,
                           read_labels_json, save_label_png, write_labels_json)

IMAGE_RE = re.compile(r"seed(\d+)\.png")
HISTORY = "mask_history"
NO_VERSION = "none"
STALE_TMP_SECONDS = 60  # a write_atomic temp file older than this is left over from a killed save


class StaleSave(UserError):
    """The mask on disk changed since the page loaded it (another tab or program saved it)."""


@dataclass
class ImageEntry:
    name: str      # "seed0003"
    seed: int
    width: int
    height: int

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def mask_file(self) -> str:
        return f"{self.name}_mask.png"


def file_version(path: Path) -> str:
    """SHA-1 of the file's bytes (short), or NO_VERSION: an ETag that any writer changes."""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return NO_VERSION


class ShotStore:
    """A `ganseg sample` folder opened for annotation; every method is safe to call from any thread."""

    def __init__(self, folder: str | Path, labels: str | Path | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MissingFile(f"{self.folder}: not a folder; pass the `ganseg sample --out` folder, e.g. "
                              f"`ganseg sample --seeds 0-9 --out {self.folder}` first")
        self.labels_path = Path(labels) if labels else self.folder / "labels.json"
        self.lock = threading.RLock()
        self.images = self._scan_images()
        self.labels, self.labels_exist = self._read_labels()
        self.cleaned = self._remove_stale_temp_files()

    # ---------------------------------------------------------------- scanning

    def _scan_images(self) -> dict[str, ImageEntry]:
        found = sorted((int(m.group(1)), p) for p in self.folder.iterdir() if (m := IMAGE_RE.fullmatch(p.name)))
        if not found:
            raise MissingFile(f"{self.folder}: no seedNNNN.png images to annotate; make them with "
                              f"`ganseg sample --seeds 0-9 --out {self.folder}`")
        images = {}
        for seed, p in found:
            try:
                with Image.open(p) as im:  # header only: sizes for the page, pixels when it asks
                    w, h = im.size
            except (OSError, SyntaxError, ValueError) as exc:
                raise BadInput(f"{p}: not a readable image ({exc}); delete it or rerun `ganseg sample`") from None
            images[p.stem] = ImageEntry(p.stem, seed, w, h)
        return images

    def _read_labels(self) -> tuple[LabelSet, bool]:
        """labels.json when present (a bad one stops the command: its message names the fix); else the
        default classes, written with the first saved mask so that train-head can read them."""
        try:
            return read_labels_json(self.labels_path), True
        except LabelFileMissing:
            if self.labels_path.is_dir():
                raise LabelFileError(f"--labels {self.labels_path}: is a folder; pass a labels.json file path") from None
            return LabelSet(CLASS_NAMES, palette_for(len(CLASS_NAMES))), False

    def _remove_stale_temp_files(self) -> list[str]:
        """write_atomic temp files (".NAME.xxxx.tmp") a killed save left behind; the real files are intact."""
        now, removed = time.time(), []
        for p in [*self.folder.glob(".*.tmp"), *self.folder.glob(f"{HISTORY}/.*.tmp")]:
            if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                p.unlink(missing_ok=True)
                removed.append(p.name)
        return removed

    def entry(self, name: str) -> ImageEntry:
        try:
            return self.images[name]
        except KeyError:
            raise BadInput(f"no image {name!r} in {self.folder}") from None

    def image_path(self, name: str) -> Path:
        return self.folder / self.entry(name).file

    def mask_path(self, name: str) -> Path:
        return self.folder / self.entry(name).mask_file

    # ---------------------------------------------------------------- masks

    def check_mask(self, name: str, mask: np.ndarray, where: str) -> None:
        """Same size as the image, every value a class index: what train-head will demand."""
        e = self.entry(name)
        if mask.shape != (e.height, e.width):
            raise BadInput(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but {e.file} is {e.width}x{e.height}; "
                           f"the mask must have its image's size")
        top = int(mask.max()) if mask.size else 0
        if top >= len(self.labels):
            raise BadInput(f"{where}: uses class {top} but only {len(self.labels)} classes are named "
                           f"(0..{len(self.labels) - 1}); add classes in the page or fix the mask")

    def status(self, name: str) -> dict:
        """What the navigation list shows: annotated or not, and why a mask on disk cannot be used."""
        path = self.mask_path(name)
        if not path.exists():
            return {"annotated": False, "error": None}
        try:
            self.check_mask(name, load_label_png(path), str(path))
        except UserError as exc:
            return {"annotated": False, "error": str(exc)}
        return {"annotated": True, "error": None}

    def load_mask(self, name: str) -> tuple[np.ndarray | None, str, str | None]:
        """(mask or None, version, error). A mask that cannot be used comes back as None with the
        reason; the page starts from an empty mask and the bad file is kept as a backup on first save."""
        with self.lock:
            path = self.mask_path(name)
            version = file_version(path)
            if version == NO_VERSION:
                return None, version, None
            try:
                mask = load_label_png(path)
                self.check_mask(name, mask, str(path))
            except UserError as exc:
                return None, version, str(exc)
            return mask, version, None

    def save_mask(self, name: str, mask: np.ndarray, base_version: str) -> str:
        """Write NAME_mask.png if nobody saved it since `base_version`; returns the new version.

        The previous file (if any) is first kept as mask_history/NAME_mask.N.png; labels.json is
        written too when it does not exist yet (train-head needs it).
        """
        with self.lock:
            path = self.mask_path(name)
            self.check_mask(name, mask, f"{name}_mask.png (from the page)")
            current = file_version(path)
            if current != base_version:
                raise StaleSave(f"{path.name} was saved elsewhere (another tab or program) after this page loaded "
                                f"it; this save was refused so that neither version is lost: reload the image "
                                f"to see the other version, or press 'Overwrite' to keep yours (the other is backed up)")
            if current != NO_VERSION:
                self._backup(path)
            if not self.labels_exist:
                self.write_labels(self.labels.class_names, self.labels.palette)
            save_label_png(path, mask.astype(np.uint8), self.labels.palette)
            return file_version(path)

    def _backup(self, path: Path) -> Path:
        hist = self.folder / HISTORY
        nums = [int(m.group(1)) for p in hist.glob(f"{path.stem}.*.png")
                if (m := re.fullmatch(re.escape(path.stem) + r"\.(\d+)\.png", p.name))] if hist.is_dir() else []
        dest = hist / f"{path.stem}.{max(nums, default=0) + 1}.png"
        write_atomic(dest, path.read_bytes())
        return dest

    def backups(self, name: str) -> list[Path]:
        stem = self.entry(name).mask_file[:-4]
        return sorted((self.folder / HISTORY).glob(f"{stem}.*.png"), key=lambda p: int(p.name.split(".")[-2]))

    def annotated(self) -> list[str]:
        return [n for n in self.images if self.status(n)["annotated"]]

    # ---------------------------------------------------------------- classes

    def write_labels(self, names, palette) -> LabelSet:
        """Rename/add classes (never remove: saved masks use their indices), then write labels.json."""
        with self.lock:
            names = [str(n).strip() for n in names]
            if len(names) < len(self.labels):
                raise BadInput(f"classes cannot be removed ({len(self.labels)} named, {len(names)} sent): saved masks "
                               f"use their indices; rename an unused class instead")
            try:
                pal = np.asarray(palette if palette is not None else [], dtype=np.int64).reshape(-1, 3)
            except (TypeError, ValueError):
                raise BadInput(f"palette must hold one [r, g, b] (0..255) per class, got {palette!r:.80}") from None
            if len(pal) < len(names):  # new classes get the default palette's next colours
                pal = np.concatenate([pal, palette_for(len(names))[len(pal):].astype(np.int64)])
            if pal.shape != (len(names), 3) or pal.min() < 0 or pal.max() > 255:
                raise BadInput(f"palette must hold one [r, g, b] (0..255) per class ({len(names)} classes)")
            write_labels_json(self.labels_path, names, pal.astype(np.uint8))
            self.labels, self.labels_exist = read_labels_json(self.labels_path), True
            return self.labels
