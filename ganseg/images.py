"""Image helpers shared by every stage: tensor <-> uint8, grids, atomic PNG writes, overlays."""
from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output NCHW in [-1, 1] -> uint8 NHWC."""
    x = (img.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the generator's range)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 NHWC -> one uint8 HWC mosaic, row-major, white padding."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im
    return grid


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Temp file + fsync + rename (+ directory fsync): a killed or crashed run leaves either the old
    bytes or the new ones under `path`, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide outputs from other users/jobs
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_png(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def _resize_pil(im: Image.Image, size: int) -> Image.Image:
    """size x size: area (box) filter when shrinking, bicubic when enlarging."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.Resampling.BOX if im.size[0] > size else Image.Resampling.BICUBIC)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HWC -> uint8 size x size x C, with the same filters as `load_rgb`."""
    return np.asarray(_resize_pil(Image.fromarray(image), size))


def load_rgb(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Any image file -> uint8 HWC RGB, optionally resized (area) to size x size; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = _resize_pil(im, size)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None


def overlay(images: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour-coded label maps blended over uint8 NHWC images (class 0 = background left clear)."""
    colour = palette[labels].astype(np.float32)
    a = np.where(labels[..., None] > 0, alpha, 0.0)
    return (images.astype(np.float32) * (1 - a) + colour * a).round().astype(np.uint8)
