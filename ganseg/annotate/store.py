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
- A mask is *reviewed* (``seedNNNN_mask.png``: painted, corrected or accepted by the person) or
  *proposed* (``seedNNNN_proposed.png``: the head's proposal, saved as the page showed it, not yet
  looked at). The file name says which, so `train-head` (which by default uses only reviewed masks)
  and a person listing the folder tell them apart without any other file to keep in step.
- The folder must be writable (checked at start, like every command's --out) and every image should
  have its latent in latents.safetensors (`train-head` and Propose use the latents, not the pixels):
  images without one are listed, marked in the page, and refused by `train-head` by name.
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
from ganseg.paths import check_out_dir, check_out_file
from ganseg.labels import (CLASS_NAMES, LabelFileError, LabelSet, LabelFileMissing, load_label_png, palette_for,
                           read_labels_json, save_label_png, write_labels_json)

IMAGE_RE = re.compile(r"seed(\d+)\.png")
HISTORY = "mask_history"
KINDS = ("reviewed", "proposed")  # seedNNNN_mask.png / seedNNNN_proposed.png
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
    latent: bool | None = None  # in latents.safetensors? None: the folder has no latents file

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def mask_file(self) -> str:
        return f"{self.name}_mask.png"

    @property
    def proposed_file(self) -> str:
        return f"{self.name}_proposed.png"


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
        self._check_writable()
        self.labels, self.labels_exist = self._read_labels()
        self.latents_error = self._mark_latents()
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

    def _check_writable(self) -> None:
        """Every save writes here: an unwritable folder is refused at start with one line (it used to
        start, then answer each save with an internal error)."""
        check_out_dir(self.folder, "SHOTS_DIR")
        if (self.folder / HISTORY).is_dir():
            check_out_dir(self.folder / HISTORY, "SHOTS_DIR")
        if self.labels_path != self.folder / "labels.json":
            check_out_file(self.labels_path, "--labels")

    def _mark_latents(self) -> str | None:
        """Set each image's `latent` from latents.safetensors' seeds (read with numpy: no torch at start).
        Returns why the file cannot be used, or None."""
        from safetensors import safe_open

        path = self.folder / "latents.safetensors"
        if not path.is_file():
            return (f"{path} is missing: Propose and `train-head` need the latents `ganseg sample` writes beside "
                    f"the images (rerun it without --no-latents); `train-head --real` can still use the masks")
        try:
            with safe_open(str(path), framework="np") as f:
                seeds = {int(s) for s in f.get_tensor("seeds").tolist()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
            return f"{path}: unreadable latents file ({type(exc).__name__}: {exc}); rerun `ganseg sample`"
        for e in self.images.values():
            e.latent = e.seed in seeds
        return None

    def without_latent(self) -> list[str]:
        """Images whose masks `train-head` cannot use: latents.safetensors has no latent for their seed."""
        return [n for n, e in self.images.items() if e.latent is False]

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

    def mask_path(self, name: str, kind: str = "reviewed") -> Path:
        e = self.entry(name)
        if kind not in KINDS:
            raise BadInput(f"mask kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return self.folder / (e.mask_file if kind == "reviewed" else e.proposed_file)

    def current(self, name: str) -> tuple[Path, str | None]:
        """(file, kind) of the mask the page shows for `name`: the reviewed one when it exists, else the
        proposed one, else (the reviewed path, None)."""
        for kind in KINDS:
            path = self.mask_path(name, kind)
            if path.exists():
                return path, kind
        return self.mask_path(name), None

    def version(self, name: str) -> str:
        """The ETag of what is on disk for `name`: kind + SHA-1 of its file, or NO_VERSION."""
        path, kind = self.current(name)
        return NO_VERSION if kind is None else f"{kind[0]}{file_version(path)}"

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
        """What the navigation list shows: reviewed ("annotated"), an unreviewed proposal on disk, the
        latent, and why a mask on disk cannot be used."""
        path, kind = self.current(name)
        row = {"annotated": False, "proposed": False, "error": None, "latent": self.entry(name).latent}
        if kind is None:
            return row
        try:
            self.check_mask(name, load_label_png(path), str(path))
        except UserError as exc:
            return {**row, "error": str(exc)}
        return {**row, "annotated": kind == "reviewed", "proposed": kind == "proposed"}

    def load_mask(self, name: str) -> tuple[np.ndarray | None, str, str | None, str | None]:
        """(mask or None, version, error, kind). A mask that cannot be used comes back as None with the
        reason; the page starts from an empty mask and the bad file is kept as a backup on first save."""
        with self.lock:
            path, kind = self.current(name)
            version = self.version(name)
            if kind is None:
                return None, version, None, None
            try:
                mask = load_label_png(path)
                self.check_mask(name, mask, str(path))
            except UserError as exc:
                return None, version, str(exc), kind
            return mask, version, None, kind

    def save_mask(self, name: str, mask: np.ndarray, base_version: str, kind: str = "reviewed") -> str:
        """Write NAME_mask.png (kind "reviewed") or NAME_proposed.png (kind "proposed") if nobody saved
        this image's mask since `base_version`; returns the new version.

        Each file replaced or superseded is first kept as mask_history/NAME_{mask,proposed}.N.png; the
        other kind's file is then removed, so that disk holds one mask per image and its name says
        whether a person reviewed it. labels.json is written too when it does not exist yet.
        """
        with self.lock:
            path = self.mask_path(name, kind)
            self.check_mask(name, mask, f"{path.name} (from the page)")
            current = self.version(name)
            if current != base_version:
                raise StaleSave(f"{self.current(name)[0].name} was saved elsewhere (another tab or program) after this "
                                f"page loaded it; this save was refused so that neither version is lost: reload the "
                                f"image to see the other version, or press 'Overwrite' to keep yours (the other is "
                                f"backed up)")
            other = self.mask_path(name, KINDS[1 - KINDS.index(kind)])
            for p in (path, other):
                if p.exists():
                    self._backup(p)
            if not self.labels_exist:
                self.write_labels(self.labels.class_names, self.labels.palette)
            save_label_png(path, mask.astype(np.uint8), self.labels.palette)
            other.unlink(missing_ok=True)  # after the write: a kill in between leaves both, never neither
            return self.version(name)

    def _backup(self, path: Path) -> Path:
        hist = self.folder / HISTORY
        nums = [int(m.group(1)) for p in hist.glob(f"{path.stem}.*.png")
                if (m := re.fullmatch(re.escape(path.stem) + r"\.(\d+)\.png", p.name))] if hist.is_dir() else []
        dest = hist / f"{path.stem}.{max(nums, default=0) + 1}.png"
        write_atomic(dest, path.read_bytes())
        return dest

    def backups(self, name: str, kind: str = "reviewed") -> list[Path]:
        stem = self.mask_path(name, kind).stem
        return sorted((self.folder / HISTORY).glob(f"{stem}.*.png"), key=lambda p: int(p.name.split(".")[-2]))

    def annotated(self) -> list[str]:
        """Images with a usable reviewed mask: what proposals train on and train-head uses by default."""
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
