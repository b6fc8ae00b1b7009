"""`ganseg export onnx`: the distilled UNet (FP32/FP16/INT8) or generator + head ("labeler") as ONNX.

The command only: the UNet export is `ganseg.export.onnx_export`, INT8 `ganseg.export.quantize`, the
labeler `ganseg.export.labeler`. Why its own module: the library modules import each other one way
(quantize and the labeler use the UNet export's pieces); the command that picks one of them sits
above all three, so no two of them import each other.
"""
from __future__ import annotations

import argparse

from ganseg.errors import UserError
from ganseg.export.onnx_export import (DEFAULT_OPSET, PRECISIONS, export_unet, load_unet_checked, read_metadata,
                                       unet_parity)
from ganseg.paths import check_out_file

_DEFAULT = "<bundled default>"


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--unet", nargs="?", const=_DEFAULT, default=None, metavar="RUN",
                      help="export a UNet: a `ganseg train-unet` folder or .safetensors (omit RUN: bundled default)")
    what.add_argument("--labeler", action="store_true",
                      help="export generator + few-shot head as one graph (z -> image, labels, confidence)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="UNet weights/compute precision (I/O stays float32)")
    p.add_argument("--int8", action="store_true",
                   help="UNet: QDQ INT8 via ONNX Runtime static quantization, calibrated on --calib photos")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="--int8: folder of your photos to calibrate on (required unless the UNet is the bundled "
                        "default, which calibrates on rendered faces)")
    p.add_argument("--calib-images", type=int, default=64, help="--int8: at most this many calibration photos")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help="ONNX opset (>= 17; the labeler uses at least 18, the dynamo exporter's)")
    p.add_argument("--ckpt", default=None, help="--labeler: generator .pt/.pkl/.safetensors (default: bundled)")
    p.add_argument("--head", default=None, help="--labeler: head file from `ganseg train-head`")
    p.add_argument("--plugin", action="store_true",
                   help="--labeler: write the fused resample-accumulate as one GansegResampleAccumulate node "
                        "(for the TensorRT plugin; ONNX Runtime cannot run that file)")
    p.add_argument("--truncation", type=float, default=1.0, help="--labeler: truncation psi baked into the graph")
    p.add_argument("--labels-dtype", choices=["uint8", "int64"], default="uint8", help="--labeler: label dtype")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check after export")


def run(args: argparse.Namespace) -> int:
    if args.labeler:
        from ganseg.export.labeler import run_labeler_cli

        return run_labeler_cli(args)
    for flag in ("ckpt", "head"):
        if getattr(args, flag):
            raise UserError(f"--{flag} only applies with --labeler; drop it or add --labeler")
    if args.plugin:
        raise UserError("--plugin only applies with --labeler")
    path = None if args.unet == _DEFAULT else args.unet
    out = check_out_file(args.out)
    unet, _ = load_unet_checked(path)  # errors before any work
    if args.calib is not None and not args.int8:
        raise UserError("--calib only applies with --int8 (fp32/fp16 exports need no calibration)")
    if args.int8:
        if args.precision != "fp32":
            raise UserError("--int8 quantizes the fp32 graph; drop --precision")
        from ganseg.export.quantize import quantize_unet

        quantize_unet(path, out, calib=args.calib, calib_images=args.calib_images, opset=args.opset)
    else:
        export_unet(path, out, args.precision, opset=args.opset)
    size = out.stat().st_size
    meta = read_metadata(out)
    print(f"wrote {out} ({size / 1e6:.2f} MB, {meta['precision']}, opset {meta['opset']}, "
          f"{len(meta['class_names'])} classes, input_size {meta['input_size']})")
    if not args.no_verify:
        from ganseg.faces import render_faces, split_seeds

        images, _ = render_faces(split_seeds("test", 4), resolution=meta["input_size"])
        r = unet_parity(out, unet, images)
        print(f"ONNX Runtime vs PyTorch on 4 rendered test faces: max |logits diff| {r['max_abs_err']:.2e}, "
              f"argmax agreement {100 * r['argmax_agreement']:.3f} %")
    return 0
