"""The photo pipeline around a segmentation UNet: bytes/pixels -> network batch -> label maps (+ overlay).

API (stable; the Triton models, `OnnxSegmenter`, `ganseg segment --unet`, `ganseg client` and the
in-process benchmark are thin adapters over it):

    MAX_PIXELS                      the one maximum photo size (64 MP) of segment, client and server
    check_photo(source, name)       header-only size/format check -> (W, H); no pixel decoded
    INPUT_NAME, OUTPUT_NAME         the UNet's tensors ("image" FP32 [N,3,S,S] -> "logits" FP32 [N,K,S,S])
    IMAGE, MASK, MASK_LOWRES, MASK_SIZE, OVERLAY  the entry models' tensors (ganseg_segment, ganseg_segment_raw)
    UNetSpec                        input size, class names, palette (ONNX metadata / Triton parameters)
    pre(sources, size, ...)  -> Batch   encoded bytes, files or uint8 HWC pixels -> network batch
                                        (Batch.pixels uint8 NHWC, Batch.x float32 NCHW), each photo's
                                        own (H, W), optional overlay previews
    post(logits, batch, ...) -> [Segmented]  argmax -> labels at the network size, MASK at each photo's
                                        own size (unless full_mask=False), OVERLAY JPEG
    resize_labels(labels, (H, W))   nearest label resize by index arithmetic: MASK from MASK_LOWRES
                                    (`ganseg.labels.resize_labels`, the one label resize)
    label_png(labels, palette)      indexed PNG bytes, fast compression, palette kept (`ganseg.labels`)
    overlay_jpeg(image, labels, ...) overlay JPEG bytes at the preview image's size
    save_result(out, name, ...)     NAME_mask.png + NAME_overlay.jpg: the files segment and client write
    save_contact_sheet(out, overlays)  a run's overlays.png (thumbnails of the first 64)
    ort_session(path, threads=1)    the one ONNX Runtime session factory
    OnnxSegmenter(path)             the whole pipeline in-process with ONNX Runtime

Why one module: the served code, the CLI and the benchmark baseline must give the same masks and
the same costs, so they share these functions rather than copies. It is numpy + Pillow (+ ONNX
Runtime for `ort_session`) only: every Triton Python-backend process imports it, and torch there
would cost 5-8 s and ~230 MB per process. It imports nothing from ganseg.serving/export/training.

Photo rules (docs/serving.md): a photo is decoded at the smallest JPEG DCT scale (1/2, 1/4, 1/8;
Pillow's `draft`, i.e. libjpeg's own scaled IDCT) that keeps both sides >= 2x the network input and
>= `REDUCED_MIN_SIDE`, then resized to size x size with `ganseg.images.resize_rgb` (area when
shrinking, bicubic when enlarging); other formats decode at full size (PNG, WebP, ... have no scaled
decode). Decoding a 12 MP JPEG that way costs ~1/8 of a full decode and changes the masks by a
fraction of a point of mIoU (benchmarks/results/draft_decode.md).

Work proportional to what is returned: the labels are the argmax at size x size (`MASK_LOWRES`,
a few KB); MASK, the label map at the photo's own size, is those labels brought back by
nearest-neighbour index arithmetic (`resize_labels`) only where the caller wants it (a served
client asking for MASK_LOWRES + MASK_SIZE does it itself, with the same function: the same bytes).
OVERLAY is only computed when asked for, from the image as decoded for the network (never a second
decode, never the full photo), its long side at most `PREVIEW_MAX_SIDE`: a 12 MP JPEG gets a
500x375 preview, a 1080p one 480x270.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from ganseg.errors import BadInput, UserError
from ganseg.images import MAX_PIXELS, check_pixel_count, make_grid, open_photo, resize_rgb, save_png, write_atomic
# the mask format's label resize and PNG encoder are the labels module's (one rule, one encoder);
# named here too because they are this API's MASK_LOWRES -> MASK step
from ganseg.labels import MASK_PNG_COMPRESSION, label_png, resize_labels
from ganseg.paths import claim_numbered

__all__ = [
    "MAX_PIXELS", "PREVIEW_MAX_SIDE", "REDUCED_MIN_SIDE", "MASK_PNG_COMPRESSION", "INPUT_NAME", "OUTPUT_NAME",
    "IMAGE", "MASK", "MASK_LOWRES", "MASK_SIZE", "OVERLAY", "UNetSpec", "Batch", "Segmented", "check_photo", "pre", "post", "shrink", "normalize", "argmax_labels",
    "resize_labels", "label_png", "overlay_jpeg", "ort_session", "check_raw", "same_size", "OnnxSegmenter",
    "save_result", "save_contact_sheet",
]

INPUT_NAME = "image"     # the UNet's input tensor (ONNX file and ganseg_unet)
OUTPUT_NAME = "logits"   # the UNet's output tensor
IMAGE, MASK, OVERLAY = "IMAGE", "MASK", "OVERLAY"  # the entry models' tensors
# The compact mask transport: the labels at the network's size + the photo's (H, W); the client
# brings them to full size with `resize_labels` (a 12 MP MASK is 12 MB, mostly runs of one value).
MASK_LOWRES, MASK_SIZE = "MASK_LOWRES", "MASK_SIZE"
PREVIEW_MAX_SIDE = 1024  # default long side of an OVERLAY (a preview, not a full-size render)
# OVERLAY is a picture to look at, not data: JPEG. A 1024x768 overlay encodes in ~3 ms / 128 KiB as
# JPEG q90 against ~93 ms / 1.5 MB as PNG level 1 (2-core VM); the exact classes are in MASK.
OVERLAY_JPEG_QUALITY = 90
DRAFT_FACTOR = 2         # a photo is decoded at reduced scale only while both sides stay >= 2x the input
# ... and >= this many pixels: the overlay preview is drawn from that reduced decode, and a 1080p
# photo at 1/8 scale (240x135) would be a thumbnail; 1/4 (480x270) costs ~0.5 ms more to decode.
REDUCED_MIN_SIDE = 256

Source = Union[bytes, bytearray, memoryview, str, os.PathLike, np.ndarray]


# --------------------------------------------------------------------------------------------
# The UNet contract

@dataclass
class UNetSpec:
    """What pre/post-processing needs to know about a UNet (from the ONNX metadata or a Triton
    config's parameters)."""

    input_size: int
    class_names: list[str]
    palette: np.ndarray = field(repr=False)
    size_multiple: int = 1
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "ONNX file") -> "UNetSpec":
        """From parsed ONNX metadata (`ganseg.export.onnx_ops.read_metadata`) or the raw strings
        (`session.get_modelmeta().custom_metadata_map`)."""
        def val(key):
            if key not in meta:
                raise UserError(f"{source}: metadata lacks {key!r}; re-export it with `ganseg export onnx`")
            v = meta[key]
            if isinstance(v, str) and key in ("class_names", "palette", "input_size", "size_multiple", "normalization"):
                v = json.loads(v)
            return v

        norm = val("normalization")
        if abs(float(norm["scale"]) - 1 / 127.5) > 1e-9 or float(norm["offset"]) != -1.0 or norm.get("layout", "NCHW") != "NCHW":
            raise UserError(f"{source}: normalization {norm} is not the ganseg contract (uint8/127.5 - 1, NCHW); "
                            f"re-export it with `ganseg export onnx`")
        names = [str(n) for n in val("class_names")]
        palette = np.asarray(val("palette"), dtype=np.uint8).reshape(-1, 3)
        if len(palette) < len(names):
            raise UserError(f"{source}: palette has {len(palette)} colours for {len(names)} classes; re-export it")
        return cls(input_size=int(val("input_size")), class_names=names, palette=palette,
                   size_multiple=int(val("size_multiple")), input_name=str(meta.get("input_name", INPUT_NAME)),
                   output_name=str(meta.get("output_name", OUTPUT_NAME)))

    def to_parameters(self) -> dict[str, str]:
        """Triton config `parameters` (strings) that `from_parameters` reads back."""
        return {"input_size": str(self.input_size), "size_multiple": str(self.size_multiple),
                "class_names": json.dumps(self.class_names), "palette": json.dumps(self.palette.tolist())}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "UNetSpec":
        return cls(input_size=int(params["input_size"]), class_names=json.loads(params["class_names"]),
                   palette=np.asarray(json.loads(params["palette"]), np.uint8).reshape(-1, 3),
                   size_multiple=int(params.get("size_multiple", "1")))


def ort_session(path_or_bytes: str | os.PathLike | bytes, threads: int = 1, providers: Sequence[str] | None = None):
    """The one ONNX Runtime session set-up: `threads` intra-op threads, one inter-op thread,
    sequential execution, warnings only (ORT's info logs would flood a server's log)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    src = bytes(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    return ort.InferenceSession(src, so, providers=list(providers or ["CPUExecutionProvider"]))


# --------------------------------------------------------------------------------------------
# pre: photos -> network batch

@dataclass
class Batch:
    """What `pre` hands to the network and to `post`."""

    pixels: np.ndarray              # uint8 [N, S, S, 3]: each photo resized to the network input
    sizes: list[tuple[int, int]]    # each photo's own (H, W), EXIF orientation applied
    previews: list[np.ndarray | None]  # uint8 HWC overlay backgrounds (long side <= preview), or None

    @property
    def x(self) -> np.ndarray:
        """The network input: float32 [N, 3, S, S] = uint8 / 127.5 - 1."""
        return normalize(self.pixels)

    def __len__(self) -> int:
        return len(self.sizes)


def check_photo(source: bytes | str | os.PathLike, name: str | None = None, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(W, H) from the header only, or a one-line UserError (not an image, empty, above `max_pixels`).

    For callers that must refuse a photo before sending or queueing it (`ganseg client`)."""
    with open_photo(source, name or _name(source), max_pixels) as photo:
        return photo.size


def pre(sources: Sequence[Source], size: int, *, names: Sequence[str] | None = None,
        max_pixels: int = MAX_PIXELS, preview: int = 0) -> Batch:
    """Photos -> `Batch`: encoded bytes, image files (path) or uint8 HWC RGB arrays, any sizes.

    Encoded photos are decoded at reduced JPEG scale while both sides stay >= 2 x `size` and >=
    `REDUCED_MIN_SIDE` (module docstring); `preview` > 0 also keeps, per photo, an overlay background:
    that same decoded image shrunk to a long side of at most `preview` (one decode per photo, whether
    or not an overlay is wanted, so the network input and the mask never depend on it).
    Bad data raises UserError naming the photo (`names[i]`, else its path or "image i").
    """
    if not len(sources):
        return Batch(np.zeros((0, size, size, 3), np.uint8), [], [])
    pixels, sizes, previews = [], [], []
    for i, src in enumerate(sources):
        name = names[i] if names is not None else _name(src, i)
        if isinstance(src, np.ndarray):
            im = _check_pixels(src, name, max_pixels)
            hw = im.shape[:2]
            pv = shrink(im, preview) if preview else None
        else:
            with open_photo(src, name, max_pixels, draft=max(DRAFT_FACTOR * size, REDUCED_MIN_SIDE)) as photo:
                im, (w, h) = photo.rgb(), photo.size
            hw = (h, w)
            pv = shrink(im, preview) if preview else None
        pixels.append(resize_rgb(np.ascontiguousarray(im), size))
        sizes.append((int(hw[0]), int(hw[1])))
        previews.append(pv)
    return Batch(np.stack(pixels), sizes, previews)


def _name(src, i: int | None = None) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "image" if i is None else f"image {i}"


def _check_pixels(im: np.ndarray, name: str, max_pixels: int) -> np.ndarray:
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
        raise BadInput(f"{name}: {im.dtype} {list(im.shape)}, expected uint8 [H, W, 3] (RGB, channels last)")
    h, w = im.shape[:2]
    if h < 1 or w < 1:
        raise BadInput(f"{name}: image has no pixels ({w}x{h}); send a non-empty image")
    check_pixel_count(w, h, name, max_pixels)
    return im


def shrink(im: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 HWC with its long side at most `max_side` (area filter; aspect kept): an overlay preview."""
    h, w = im.shape[:2]
    if max(h, w) <= max_side:
        return im
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX))


def normalize(batch_uint8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, value = uint8 / 127.5 - 1 (same float ops as ganseg.images.from_uint8)."""
    x = np.ascontiguousarray(batch_uint8.transpose(0, 3, 1, 2)).astype(np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return x


def check_raw(batch: np.ndarray, name: str, max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """A raw request tensor uint8 [B, H, W, 3] -> B images; UserError on a wrong dtype/shape/size."""
    batch = np.asarray(batch)
    if batch.dtype != np.uint8:
        raise BadInput(f"{name}: dtype {batch.dtype}, expected uint8 RGB; send UINT8 [B, H, W, 3]")
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise BadInput(f"{name}: shape {list(batch.shape)}, expected [B, H, W, 3] (RGB, channels last)")
    if batch.shape[0] == 0:
        raise BadInput(f"{name}: empty batch (0 images); send at least one image")
    return [_check_pixels(im, name, max_pixels) for im in batch]


def same_size(sizes: Sequence[tuple[int, int]], name: str) -> tuple[int, int]:
    """The (H, W) shared by the photos of one request (its MASK output is one [B, H, W] tensor)."""
    distinct = set(map(tuple, sizes))
    if len(distinct) != 1:
        raise BadInput(f"{name}: the {len(sizes)} images of one request have different sizes {sorted(distinct)}; "
                       f"send one image per request (the server batches requests) or same-size images")
    return next(iter(distinct))


# --------------------------------------------------------------------------------------------
# post: logits -> label maps (+ overlays)

@dataclass
class Segmented:
    """One photo's result."""

    mask: np.ndarray | None     # uint8 [H, W] class indices at the photo's own size (None: not asked for)
    overlay: bytes | None = None  # JPEG of the labels over the preview, when a preview was kept
    labels: np.ndarray | None = None  # uint8 [S, S] class indices at the network's size (MASK_LOWRES)
    size: tuple[int, int] | None = None  # the photo's own (H, W) (MASK_SIZE): mask = resize_labels(labels, size)


def argmax_labels(logits: np.ndarray) -> np.ndarray:
    """float [N, K, H, W] -> uint8 [N, H, W] (first maximum on ties, as torch.argmax)."""
    return np.argmax(logits, axis=1).astype(np.uint8)


def post(logits: np.ndarray, batch: Batch, palette: np.ndarray | None = None, alpha: float = 0.5,
         full_mask: bool = True) -> list[Segmented]:
    """Network output (float logits [N, K, S, S], or uint8 labels [N, S, S]) -> one `Segmented` per
    photo: the labels at the network's size and the photo's size; MASK at the photo's own size
    unless `full_mask` is False (a caller that ships the labels and lets the receiver expand them);
    OVERLAY JPEG where `batch` kept a preview (needs `palette`)."""
    labels = argmax_labels(logits) if logits.ndim == 4 else np.asarray(logits, np.uint8)
    out = []
    for lab, hw, pv in zip(labels, batch.sizes, batch.previews):
        jpeg = None
        if pv is not None:
            jpeg = overlay_jpeg(pv, resize_labels(lab, pv.shape[:2]), palette, alpha)
        out.append(Segmented(resize_labels(lab, hw) if full_mask else None, jpeg, lab, (int(hw[0]), int(hw[1]))))
    return out


def overlay_jpeg(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
                 quality: int = OVERLAY_JPEG_QUALITY) -> bytes:
    """JPEG bytes of the colour-coded labels blended over the image (class 0 left clear); the image
    and labels have the same (preview) size.

    Blended by Pillow in C (palette image -> RGB, `Image.blend`, `Image.composite` with the
    labels > 0 mask): within one level of `ganseg.images.overlay` (Pillow truncates where that
    rounds), which JPEG q90 does not keep anyway, at ~1/3 of its time (a 500x375 preview: ~1.0 ms
    against ~2.9 ms of uint16 numpy; the served preview is blended per request)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    h, w = labels.shape
    base = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    colours = Image.frombytes("P", (w, h), labels.tobytes())
    pal = np.zeros((256, 3), np.uint8)
    pal[:len(palette)] = np.asarray(palette, np.uint8)[:256]
    colours.putpalette(pal.tobytes())
    keep = Image.frombytes("L", (w, h), labels.tobytes()).point(_NONZERO)  # class 0: the photo as it is
    ov = Image.composite(Image.blend(base, colours.convert("RGB"), float(alpha)), base, keep)
    buf = io.BytesIO()
    ov.save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4: crisp class edges
    return buf.getvalue()


_NONZERO = [0] + [255] * 255  # Image.point table: label > 0 -> 255


# --------------------------------------------------------------------------------------------
# Results on disk: what `ganseg segment` and `ganseg client` write

SHEET_THUMB = 128  # contact-sheet thumbnail side (px)
SHEET_MAX = 64     # a contact sheet shows the first this many overlays of a run


def save_result(out: str | os.PathLike, name: str, mask: np.ndarray, overlay: bytes | None,
                palette: np.ndarray) -> Path:
    """OUT/NAME_mask.png (indexed PNG, pixel = class index, at the photo's own size) and, when there is
    one, OUT/NAME_overlay.jpg, each written atomically; returns the mask's path.

    Why one writer: `ganseg segment` (in-process) and `ganseg client` (through Triton) write the same
    files from the same results, so the same photos give the same bytes whichever path made them."""
    out = Path(out)
    mask_path = out / f"{name}_mask.png"
    write_atomic(mask_path, label_png(mask, palette))
    if overlay is not None:
        write_atomic(out / f"{name}_overlay.jpg", bytes(overlay))
    return mask_path


def save_contact_sheet(out: str | os.PathLike, overlays: Sequence[bytes | None]) -> Path | None:
    """One picture of a run: the first `SHEET_MAX` overlays as `SHEET_THUMB`-px thumbnails in a grid,
    written to OUT/overlays.png, or overlays-2.png, ... (never over the sheet of an earlier run in the
    same folder: `ganseg.paths.claim_numbered`). None when the run made no overlay."""
    shown = [o for o in overlays if o is not None][:SHEET_MAX]
    if not shown:
        return None
    thumbs = [np.asarray(Image.open(io.BytesIO(bytes(o))).convert("RGB").resize((SHEET_THUMB, SHEET_THUMB),
                                                                               Image.Resampling.BOX))
              for o in shown]
    sheet = claim_numbered(out, "overlays", ".png")
    save_png(sheet, make_grid(np.stack(thumbs)))
    return sheet


# --------------------------------------------------------------------------------------------
# In-process

class OnnxSegmenter:
    """The whole pipeline in-process with ONNX Runtime: the reference the served masks must equal,
    and a server-free segmenter for library callers."""

    def __init__(self, onnx_path: str | Path, threads: int = 1, spec: UNetSpec | None = None):
        self.path = Path(onnx_path)
        self.session = ort_session(self.path, threads)
        if spec is None:
            spec = UNetSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.spec = spec

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.spec.output_name], {self.spec.input_name: x})[0]

    def run(self, sources: Sequence[Source], names: Sequence[str] | None = None, preview: int = 0,
            max_pixels: int = MAX_PIXELS, alpha: float = 0.5) -> list[Segmented]:
        """Photos (bytes, files, uint8 HWC arrays) -> `Segmented` (overlay when preview > 0)."""
        batch = pre(sources, self.spec.input_size, names=names, max_pixels=max_pixels, preview=preview)
        if not len(batch):
            return []
        return post(self.logits(batch.x), batch, self.spec.palette, alpha)

    def segment(self, sources: Sequence[Source]) -> list[np.ndarray]:
        """Photos -> uint8 label maps at each photo's own size."""
        return [r.mask for r in self.run(sources)]
