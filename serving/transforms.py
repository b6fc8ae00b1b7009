"""Pre- and post-processing around the UNet, shared by `ganseg segment`, the Triton models and the
client; numpy + Pillow only.

Why a module of its own: every Triton Python-backend model runs in its own process, and importing
torch there costs 5-8 s and ~230 MB per process on our 2-core machines. Everything a served model
needs (decode, resize to the UNet's size, normalize, argmax, resize back, overlay, PNG) is here,
torch-free, and `ganseg.unet` re-exports the two steps `ganseg segment` shares with the server
(`to_input_batch`, `labels_to_sizes`), so the CLI and the server are one piece of code.

The rule for a photo of any size (the ONNX UNet contract, docs/serving.md): resize to
`input_size`² with `ganseg.images.resize_rgb` (area when shrinking, bicubic when enlarging), run the
net, argmax, resize the label map back to the photo's own size with NEAREST.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ganseg.errors import UserError
from ganseg.images import decode_rgb, overlay, resize_rgb

# Largest photo a server accepts by default (pixels): a 24 MP camera photo fits; 16 concurrent
# decodes of this size stay within a few GB. Configurable per model (`max_pixels` parameter).
SERVER_MAX_PIXELS = 32 * 1024 * 1024


def to_input_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """uint8 HWC RGB images of any sizes -> uint8 [N, size, size, 3] (ganseg.images.resize_rgb)."""
    if not len(images):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_rgb(np.ascontiguousarray(im), size) for im in images])


def labels_to_sizes(labels: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """uint8 label maps [N, h, w] -> one uint8 [H, W] per (H, W) in `sizes`, NEAREST (labels are
    class indices: never interpolated)."""
    out = []
    for lab, (h, w) in zip(labels, sizes):
        lab = np.ascontiguousarray(lab, dtype=np.uint8)
        if lab.shape == (h, w):
            out.append(lab)
        else:
            out.append(np.asarray(Image.fromarray(lab).resize((int(w), int(h)), Image.Resampling.NEAREST)))
    return out


def normalize(batch_uint8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, value = uint8 / 127.5 - 1 (same float ops as ganseg.images.from_uint8)."""
    x = np.ascontiguousarray(batch_uint8.transpose(0, 3, 1, 2)).astype(np.float32)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return x


def argmax_labels(logits: np.ndarray) -> np.ndarray:
    """float [N, K, H, W] -> uint8 [N, H, W] (first maximum on ties, as torch.argmax)."""
    return np.argmax(logits, axis=1).astype(np.uint8)


def label_png(labels: np.ndarray, palette: np.ndarray) -> bytes:
    """Indexed PNG bytes: pixel values are class indices, colours the palette (looks right in a viewer)."""
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    h, w = labels.shape
    im = Image.frombytes("P", (w, h), labels.tobytes())
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(palette)] = palette
    im.putpalette(pal.reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def overlay_png(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> bytes:
    """PNG bytes of the colour-coded labels blended over the image (class 0 left clear)."""
    ov = overlay(image[None], labels[None], palette, alpha)[0]
    buf = io.BytesIO()
    Image.fromarray(ov).save(buf, format="PNG", compress_level=1)  # speed over size: a server response
    return buf.getvalue()


@dataclass
class UNetSpec:
    """What pre/post-processing needs to know about a UNet (from the ONNX metadata or a Triton
    config's parameters)."""

    input_size: int
    class_names: list[str]
    palette: np.ndarray = field(repr=False)
    size_multiple: int = 1
    input_name: str = "image"
    output_name: str = "logits"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_metadata(cls, meta: dict, source: str = "ONNX file") -> "UNetSpec":
        """From `ganseg.export.onnx_export.read_metadata` (parsed values) or raw metadata strings."""
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
                   size_multiple=int(val("size_multiple")), input_name=str(meta.get("input_name", "image")),
                   output_name=str(meta.get("output_name", "logits")))

    def to_parameters(self) -> dict[str, str]:
        """Triton config `parameters` (strings) that `from_parameters` reads back."""
        return {"input_size": str(self.input_size), "size_multiple": str(self.size_multiple),
                "class_names": json.dumps(self.class_names), "palette": json.dumps(self.palette.tolist())}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "UNetSpec":
        return cls(input_size=int(params["input_size"]), class_names=json.loads(params["class_names"]),
                   palette=np.asarray(json.loads(params["palette"]), np.uint8).reshape(-1, 3),
                   size_multiple=int(params.get("size_multiple", "1")))


def decode_items(items: np.ndarray, name: str, max_pixels: int = SERVER_MAX_PIXELS) -> list[np.ndarray]:
    """A request's BYTES items (object array, any shape) -> uint8 HWC RGB images; UserError naming
    the item on bad data. An empty request is an error too (nothing to segment)."""
    flat = list(np.asarray(items, dtype=object).reshape(-1))
    if not flat:
        raise UserError(f"{name}: empty batch (0 images); send at least one encoded image")
    out = []
    for i, data in enumerate(flat):
        label = name if len(flat) == 1 else f"{name} item {i}"
        if isinstance(data, str):  # a client that sent text
            data = data.encode("latin-1", "replace")
        out.append(decode_rgb(bytes(data), label, max_pixels))
    return out


def check_raw(batch: np.ndarray, name: str, max_pixels: int = SERVER_MAX_PIXELS) -> list[np.ndarray]:
    """A raw request tensor uint8 [B, H, W, 3] -> B images; UserError on a wrong dtype/shape/size."""
    batch = np.asarray(batch)
    if batch.dtype != np.uint8:
        raise UserError(f"{name}: dtype {batch.dtype}, expected uint8 RGB; send UINT8 [B, H, W, 3]")
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise UserError(f"{name}: shape {list(batch.shape)}, expected [B, H, W, 3] (RGB, channels last)")
    b, h, w, _ = batch.shape
    if b == 0:
        raise UserError(f"{name}: empty batch (0 images); send at least one image")
    if h < 1 or w < 1:
        raise UserError(f"{name}: image has no pixels ({w}x{h}); send a non-empty image")
    if h * w > max_pixels:
        raise UserError(f"{name}: image is {w}x{h} ({h * w / 1e6:.1f} MP), above the limit of "
                        f"{max_pixels / 1e6:.1f} MP; downscale it first")
    return list(batch)


def same_size(images: list[np.ndarray], name: str) -> tuple[int, int]:
    """The (H, W) shared by the images of one request (its MASK output is one [B, H, W] tensor)."""
    sizes = {im.shape[:2] for im in images}
    if len(sizes) != 1:
        raise UserError(f"{name}: the {len(images)} images of one request have different sizes {sorted(sizes)}; "
                        f"send one image per request (the server batches requests) or same-size images")
    return images[0].shape[:2]


class OnnxSegmenter:
    """The whole pipeline in-process with ONNX Runtime: the reference the served masks must equal,
    and what `ganseg segment --method onnx`-style callers can use without a server."""

    def __init__(self, onnx_path: str | Path, threads: int = 1, spec: UNetSpec | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        if spec is None:
            spec = UNetSpec.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.spec = spec

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.spec.output_name], {self.spec.input_name: x})[0]

    def segment(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 HWC images of any sizes -> uint8 label maps at each image's own size."""
        batch = to_input_batch(images, self.spec.input_size)
        labels = argmax_labels(self.logits(normalize(batch))) if len(batch) else np.zeros((0,), np.uint8)
        return labels_to_sizes(labels, [im.shape[:2] for im in images])
