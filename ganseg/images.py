"""Image helpers shared by every stage: decoding any image file, tensor <-> uint8, grids, atomic
PNG writes, overlays.

`decode_rgb` is the one way bytes become pixels (`load_rgb` for files, the server for request
bodies), so every stage agrees on how an unusual image reads:

- 16-bit grey (`I;16`, `I;16B`, `I;16L`): scaled from 0..65535 to 0..255 (not clipped to white).
- `I` (32-bit int): Pillow opens 16-bit PNG/TIFF greys as `I`, so values all within 0..65535 are
  scaled as 16-bit; otherwise linearly from the int32 range.
- `F` (32-bit float): scaled by the smallest of the ranges [0, 1], [0, 255], [0, 65535] that holds
  its maximum (above that: min..max); negatives and NaN read as 0.
- Alpha (`RGBA`, `LA`, `PA`, premultiplied `RGBa`/`La`, `P`/`L`/`RGB` with a tRNS transparency
  entry): composited over WHITE (`ALPHA_BACKGROUND`), as image viewers show a transparent cut-out;
  transparent pixels of a cut-out thus never read as dark hair or background-black.
- `CMYK`, `YCbCr`, `1`, `L`, `P`: Pillow's conversion to RGB.
- EXIF orientation is applied (a phone JPEG reads upright, as viewers show it).
- Multi-frame files (animated GIF, PNG (APNG) or WebP, multi-page TIFF): the first frame;
  `Photo.animated` tells, for the callers that note it (`ganseg client`).

Bad data (empty, truncated, not an image, a format outside `FORMATS`, more than `max_pixels`
pixels, a decompression bomb) raises `ganseg.errors.UserError` naming the input and the fix, and
nothing else: the size is checked from the header before any pixel is decoded, and only the
raster formats in `FORMATS` are tried (never, e.g., EPS, which Pillow would hand to Ghostscript).
"""
from __future__ import annotations

import io
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from ganseg.errors import BadInput, MissingFile

if TYPE_CHECKING:  # annotations only: the server's processes import this module and never need torch
    import torch

# Raster formats decode_rgb accepts (Pillow plugin names). JPEG includes cameras' multi-picture
# (MPO) JPEGs; PPM covers PBM/PGM/PPM.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM")
# The one maximum photo size of `segment`, `client` and the server (docs/serving.md): 64 MP is above
# any common camera photo and below Pillow's own decompression-bomb warning (89 MP). Checked from
# the header, before any pixel is decoded.
MAX_PIXELS = 64_000_000
ALPHA_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output NCHW in [-1, 1] -> uint8 NHWC."""
    import torch  # lazy: the Triton server's processes import this module and never need torch

    x = (img.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the generator's range)."""
    import torch

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


# --------------------------------------------------------------------------------------------
# Decoding

_FIX = f"pass a {', '.join(FORMATS)} image"


def check_pixel_count(w: int, h: int, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """The one size limit of every stage (segment, client, server): a one-line BadInput above it."""
    if w * h > max_pixels:
        raise BadInput(f"{name}: image is {w}x{h} = {w * h:,} pixels, above the limit of "
                       f"{_limit(max_pixels)}; downscale it first")


def _limit(max_pixels: int) -> str:
    """The limit as messages print it: exact pixels, so that a photo just above it never reads
    "64.0 MP, above the limit of 64.0 MP"."""
    return f"{max_pixels:,} pixels ({max_pixels / 1e6:g} MP)"


# EXIF orientation -> the transpose that shows the photo upright (what ImageOps.exif_transpose does)
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


class Photo:
    """An opened, header-checked image: `size` is its upright (W, H) before any pixel is decoded;
    `rgb()` decodes it (at the reduced JPEG scale asked for by `open_photo(draft=...)`)."""

    def __init__(self, im: Image.Image, fp: BinaryIO, name: str, size: tuple[int, int], orientation: int):
        self._im, self._fp, self.name, self.size, self._orientation = im, fp, name, size, orientation

    def rgb(self) -> np.ndarray:
        """uint8 HWC RGB, upright (rules in the module docstring)."""
        im, (w, h) = self._im, self.size
        try:
            im.load()
        except MemoryError:
            raise BadInput(f"{self.name}: not enough memory to decode this {w}x{h} image; downscale it first") from None
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data raises many types
            raise BadInput(f"{self.name}: image data is truncated or corrupt ({type(exc).__name__}: {exc}); "
                           f"re-export or re-download the file") from None
        if self._orientation in _ORIENT:
            im = im.transpose(_ORIENT[self._orientation])
        return _to_rgb(im, self.name)

    @property
    def animated(self) -> bool:
        """True for a file of several frames (animated GIF/APNG/WebP, multi-page TIFF), of which
        `rgb()` reads the first only. Asked on demand (GIF and TIFF walk their frame headers to
        answer), so a caller that does not note it, like the server, never pays for it."""
        try:
            return bool(getattr(self._im, "is_animated", False))
        except Exception:  # noqa: BLE001 - a corrupt later frame: the first one is what is read anyway
            return False

    def close(self) -> None:
        self._im.close()
        self._fp.close()

    def __enter__(self) -> "Photo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _orientation(im: Image.Image) -> int:
    try:
        o = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a garbled EXIF block: the pixels are fine, keep them as stored
        return 1
    return o if o in _ORIENT else 1


def open_photo(source: bytes | bytearray | memoryview | str | os.PathLike, name: str | None = None,
               max_pixels: int = MAX_PIXELS, draft: int = 0) -> Photo:
    """Open image bytes or an image file and check its header: format in `FORMATS`, at least one
    pixel, at most `max_pixels` (ganseg's own message, also above Pillow's bomb limit).

    `draft` > 0: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides
    >= draft (libjpeg's scaled IDCT: ~8x less work at 1/8); `Photo.size` stays the full size.
    A file is read by Pillow on demand: a huge non-image file costs only its header.
    Every failure of Pillow's decoders on bad data becomes a UserError: they raise a zoo of types
    (OSError, SyntaxError, ValueError, struct.error, EOFError, ...) for malformed files.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        if len(source) == 0:
            raise BadInput(f"{name}: empty (0 bytes), not an image; {_FIX}")
        f: BinaryIO = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        if path.is_dir():
            raise BadInput(f"{path} is a folder, not an image: pass the image files inside it (e.g. {path}/*.png)")
        if not path.is_file():
            raise MissingFile(f"image not found: {path}")
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise BadInput(f"{path}: cannot read ({exc.strerror}); check its permissions") from None
        if os.fstat(f.fileno()).st_size == 0:
            f.close()
            raise BadInput(f"{path}: empty file (0 bytes), not an image; {_FIX}")
    else:
        raise TypeError(f"open_photo takes bytes or a path, got {type(source).__name__}")
    try:
        with warnings.catch_warnings():  # our own limit and message, not Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(f, formats=FORMATS)
    except Image.DecompressionBombError:
        f.close()
        raise BadInput(f"{name}: image is above {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP, far above the limit of "
                       f"{_limit(max_pixels)}; downscale it first") from None
    except Image.UnidentifiedImageError:
        f.close()
        raise BadInput(f"{name}: not a readable image (unknown or unsupported format); {_FIX}") from None
    except Exception as exc:  # noqa: BLE001 - malformed headers raise many types
        f.close()
        raise BadInput(f"{name}: not a readable image ({type(exc).__name__}: {exc}); {_FIX}") from None
    w, h = im.size
    try:
        if w < 1 or h < 1:
            raise BadInput(f"{name}: image has no pixels ({w}x{h}); {_FIX}")
        check_pixel_count(w, h, name, max_pixels)
        orientation = _orientation(im)
        if draft > 0 and im.format in ("JPEG", "MPO"):
            im.draft(None, (int(draft), int(draft)))
    except BaseException:
        im.close()
        f.close()
        raise
    size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return Photo(im, f, name, size, orientation)


def _rescale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    a = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _grey_to_uint8(im: Image.Image) -> np.ndarray:
    """HW uint8 from a 16/32-bit integer or float grey image, scaled by the mode's range."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return _rescale(a, 0, 65535)
    if im.mode == "I":
        if a.size == 0 or (a.min() >= 0 and a.max() <= 65535):
            return _rescale(a, 0, 65535)
        return _rescale(a, -(2**31), 2**31 - 1)
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # mode F
    top = float(a.max()) if a.size else 0.0
    for hi in (1.0, 255.0, 65535.0):
        if top <= hi:
            return _rescale(a, 0, hi)
    return _rescale(a, float(a.min()), top)


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Any decoded Pillow image -> uint8 HWC RGB (rules in the module docstring)."""
    if im.mode.startswith("I") or im.mode == "F":
        return np.repeat(_grey_to_uint8(im)[..., None], 3, axis=2)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        try:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        except ValueError as exc:
            raise BadInput(f"{name}: cannot read colour mode {im.mode} with transparency ({exc}); {_FIX}") from None
        a = rgba[..., 3:] / 255.0
        bg = np.asarray(ALPHA_BACKGROUND, np.float32)
        return np.round(rgba[..., :3] * a + bg * (1 - a)).astype(np.uint8)
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ValueError as exc:
        raise BadInput(f"{name}: unsupported colour mode {im.mode} ({exc}); save it as 8-bit RGB") from None


def decode_rgb(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> uint8 HWC RGB; bad data raises `UserError` naming `name`.

    Safe for untrusted input (a server's request body): the pixel count is checked from the header
    before decoding, and only the formats in `FORMATS` are tried.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_rgb takes bytes, got {type(data).__name__}")
    with open_photo(data, name, max_pixels) as photo:
        return photo.rgb()


def load_rgb(path: str | os.PathLike, size: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image file -> uint8 HWC RGB (as `decode_rgb`), optionally resized (area) to size x size."""
    with open_photo(Path(path), str(path), max_pixels) as photo:
        rgb = photo.rgb()
    if size is not None:
        rgb = np.asarray(_resize_pil(Image.fromarray(rgb), size))
    return rgb


def overlay(images: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour-coded label maps blended over uint8 NHWC images (class 0 = background left clear).

    8-bit fixed-point blend (alpha in 1/256 steps, within one level of the float blend): a served
    overlay preview is blended per request, and float32 arrays cost ~4x the time."""
    w = np.uint16(round(float(alpha) * 256))
    out = images.astype(np.uint16)
    out *= np.uint16(256) - w
    out += np.asarray(palette, np.uint8)[labels].astype(np.uint16) * w
    out += np.uint16(128)
    out >>= np.uint16(8)
    return np.where(labels[..., None] > 0, out.astype(np.uint8), images)
