"""The distilled UNet as ONNX (FP32/FP16; INT8 is `ganseg.export.quantize` on top of this).

The command `ganseg export onnx` (UNet, INT8 or the generator + head "labeler") is
`ganseg.export.onnx_cli`; this module is the library the command, quantization, the Triton
repository writer and the benchmarks call.

Why ONNX: it is what ONNX Runtime, TensorRT and Triton all read, so one exported file serves every
production runtime. The UNet file is self-describing (see "The ONNX UNet contract" below): a server
or client needs nothing but the .onnx file — input/output names, normalization, class names,
palette, input size and the source weights' hash are in its metadata_props.

Exporter choice: the UNet goes through torch's TorchScript ("legacy", `dynamo=False`) exporter. For
this net it gives the cleanest graph (Conv with folded batch norm, Relu, MaxPool, Resize, Concat and
a few shape ops) with *named* dynamic axes N, H, W, and it takes well under a second, which keeps the
parity tests fast. The generator (labeler) needs the dynamo exporter, because its blur kernel is
built at run time (see `ganseg.export.labeler`).

FP16: the module itself is cast to half and wrapped in float32 -> half -> float32 casts, so the fp16
file keeps float32 `image`/`logits` (clients never change) and its weights are half (half the file).

Contract (read by serving/ and the benchmarks)::

    image  float32 [N, 3, H, W]  RGB, uint8 / 127.5 - 1; N, H, W dynamic (H, W multiples of size_multiple)
    logits float32 [N, K, H, W]
    metadata_props: ganseg.format="ganseg.unet.onnx/1", ganseg.version, input_name, output_name,
    normalization (JSON), class_names, palette, input_size, size_multiple, precision, source_sha256, opset
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ganseg.errors import UserError
from ganseg.export.onnx_ops import check_model, read_metadata, save_model, set_metadata, sha256_file
from ganseg.labels import palette_for
from ganseg.paths import check_out_file
from ganseg.pipeline import INPUT_NAME, OUTPUT_NAME, ort_session  # noqa: F401 - ort_session: the one session set-up

UNET_ONNX_FORMAT = "ganseg.unet.onnx/1"
NORMALIZATION = {"scale": 1 / 127.5, "offset": -1.0, "layout": "NCHW", "channels": "RGB"}
DEFAULT_OPSET = 17
PRECISIONS = ("fp32", "fp16")

__all__ = ["export_unet", "read_metadata", "load_unet_checked", "unet_to_onnx", "unet_parity", "UNET_ONNX_FORMAT"]


def load_unet_checked(path: str | os.PathLike | None) -> tuple[Any, Path]:
    """(UNet, weights file) with UserErrors that name the file and the fix."""
    from ganseg.unet import DEFAULT_UNET, load_unet

    if path is None:
        if not DEFAULT_UNET.is_file():
            raise UserError(f"the bundled default UNet ({DEFAULT_UNET}) is not installed; pass a run folder "
                            f"with --unet RUN (from `ganseg train-unet`)")
        file = DEFAULT_UNET
    else:
        p = Path(path)
        if p.is_dir():
            file = p / "unet.safetensors"
            if not file.is_file():
                raise UserError(f"--unet {p}: no unet.safetensors in this folder; pass the output folder of "
                                f"`ganseg train-unet` (or the .safetensors file itself)")
        elif p.is_file():
            file = p
        else:
            raise UserError(f"--unet {p}: no such file or folder; pass the output folder of `ganseg train-unet`")
    try:
        unet = load_unet(file)
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--unet {file}: {str(exc).splitlines()[0]}; retrain it with `ganseg train-unet` "
                        f"or pass another run") from None
    return unet, file


class _Fp16Wrapper(torch.nn.Module):
    """float32 in -> half net -> float32 out, so the fp16 file keeps float32 I/O."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image.half()).float()


def unet_to_onnx(unet: torch.nn.Module, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                 example_size: int = 64) -> onnx.ModelProto:
    """The bare graph (no metadata): image [N,3,H,W] float32 -> logits [N,K,H,W] float32."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)} (int8: --int8)")
    if opset < 17:
        raise UserError(f"--opset {opset}: ganseg exports need opset >= 17")
    net = copy.deepcopy(unet).float().eval().to("cpu", memory_format=torch.contiguous_format)
    if precision == "fp16":
        net = _Fp16Wrapper(net.half()).eval()
    m = 2 ** unet.cfg.depth
    size = max(m, -(-example_size // m) * m)
    x = torch.zeros(2, unet.cfg.in_channels, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning: chosen on purpose, see above
        torch.onnx.export(net, (x,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.EVAL,
                          dynamic_axes={INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "H", 3: "W"}})
    model = tidy_graph(onnx.load_from_string(buf.getvalue()))
    model.producer_name = "ganseg"
    return model


def tidy_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes -> initializers, Identity-of-initializer nodes -> the initializer itself.

    The TorchScript exporter routes shared/folded weights (e.g. batch norm folded into conv biases)
    through Identity nodes; a conv whose bias is not an initializer is left unfused by ONNX Runtime's
    QDQ (int8) fusion and by some TensorRT weight checks. Values are unchanged.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value" \
                and n.output[0] not in outputs:
            t = numpy_helper.to_array(n.attribute[0].t)
            g.initializer.append(numpy_helper.from_array(t, n.output[0]))
            inits.add(n.output[0])
            continue
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs:
            rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)
    for n in keep:
        n.input[:] = [rename.get(i, i) for i in n.input]
    del g.node[:]
    g.node.extend(keep)
    return model


def export_unet(unet_or_path: Any = None, out: str | os.PathLike | None = None, precision: str = "fp32", *,
                input_size: int | None = None, class_names: list[str] | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export a UNet (module, run folder, .safetensors file, or None = bundled default) to `out`.

    Returns the written path. The file follows the ONNX UNet contract (module docstring). For a
    module, `source_sha256` is the sha256 fingerprint of its state dict (there is no file to hash);
    `input_size` / `class_names` default to what the UNet carries (`.meta["resolution"]`,
    `.class_names`).
    """
    from ganseg import __version__

    if out is None:
        raise UserError("--out is required: the .onnx file to write")
    out = check_out_file(out)
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if isinstance(unet_or_path, torch.nn.Module):
        from ganseg.tagged import state_sha256

        unet, source_sha = unet_or_path, state_sha256(unet_or_path)
    else:
        unet, file = load_unet_checked(unet_or_path)
        source_sha = sha256_file(file)
    meta = getattr(unet, "meta", {}) or {}
    input_size = int(input_size or meta.get("resolution") or 0)
    if input_size <= 0:
        raise UserError("the UNet carries no training resolution (meta['resolution']); pass input_size=")
    k = unet.cfg.num_classes
    names = list(class_names or getattr(unet, "class_names", None) or [])
    if not names:
        from ganseg.labels import default_class_names
        names = default_class_names(k)
    if len(names) != k:
        raise UserError(f"{len(names)} class names for a UNet with {k} classes; pass {k} names")
    model = unet_to_onnx(unet, precision, opset, example_size=input_size)
    set_metadata(model, {
        "ganseg.format": UNET_ONNX_FORMAT, "ganseg.version": __version__,
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "normalization": NORMALIZATION,
        "class_names": names, "palette": palette_for(k).tolist(), "input_size": input_size,
        "size_multiple": 2 ** unet.cfg.depth, "precision": precision, "source_sha256": source_sha,
        "opset": opset, "unet_config": unet.cfg.to_dict(),
    })
    model.doc_string = (f"ganseg UNet ({precision}): image float32 [N,3,H,W] = RGB uint8/127.5-1 -> logits "
                        f"float32 [N,{k},H,W]; H, W multiples of {2 ** unet.cfg.depth}; see metadata_props")
    check_model(model)
    return save_model(model, out)


def torch_unet_logits(unet: torch.nn.Module, images_uint8: np.ndarray) -> np.ndarray:
    """PyTorch reference for parity checks: float32 logits of uint8 NHWC images."""
    from ganseg.images import from_uint8

    with torch.no_grad():
        return unet.eval()(from_uint8(images_uint8)).numpy()


def unet_parity(onnx_path: str | os.PathLike, unet: torch.nn.Module, images_uint8: np.ndarray) -> dict:
    """ORT (CPU) vs PyTorch on uint8 NHWC images: max abs logits error and argmax agreement."""
    from ganseg.images import from_uint8

    x = from_uint8(images_uint8).numpy()
    got = ort_session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    ref = torch_unet_logits(unet, images_uint8)
    return {"max_abs_err": float(np.abs(got - ref).max()),
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "logit_range": float(np.abs(ref).max())}


# --------------------------------------------------------------------------------------------
# CLI: ganseg export onnx
