"""INT8 UNet: a QDQ graph from ONNX Runtime static quantization, calibrated on rendered faces.

Why QDQ (QuantizeLinear/DequantizeLinear pairs around float ops) rather than QOperator
(QLinearConv...): the same file serves both runtimes. ONNX Runtime fuses the pairs into int8
kernels on CPU, and TensorRT reads them as explicit INT8 (it needs no calibration cache then).
TensorRT only takes zero points of 0, so activations and weights are quantized *symmetric* int8
(the ORT default, asymmetric uint8 activations, would not parse). Weights are per output channel.
Weights use 7 of the 8 bits (`reduce_range`): on x86 CPUs without VNNI, ONNX Runtime's int8 GEMM
(VPMADDUBSW) saturates pairs of 8-bit products, which for a UNet's classifier conv gave logit errors
of ~3 (of a range of 4) in our tests; with 7-bit weights the int16 sums cannot overflow.
Only convolutions are quantized: Q/DQ pairs around MaxPool/Resize/Concat cost more than they save
in ONNX Runtime on CPU (measured: ~1.3x instead of ~1.55x speed-up for the 64 px UNet on a 2-core
AVX2 machine), and TensorRT propagates int8 through those ops by itself.

Calibration data (`calibration_pixels`, shared with `ganseg export tensorrt`): the user's photos
(`--calib DIR`: the photos the UNet will segment, or like them), prepared exactly as they are when
served (`ganseg.pipeline.pre`: reduced-scale JPEG decode, resize to the input size, the graph's
normalization), so the activation ranges are those the deployed model meets. Without --calib,
only the bundled default UNet has a default: rendered faces of the *train* split, the domain it was
trained on (never the test split, on which `int8_report` measures the mIoU change). For any other
UNet, --calib is required: calibrating a model of cats on rendered faces would clip its activations.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ganseg.errors import UserError
from ganseg.export.onnx_ops import check_model, read_metadata, save_model, set_metadata
from ganseg.paths import check_out_file

CALIB_BATCH = 8
CALIB_IMAGES = 64


def calibration_pixels(calib: str | os.PathLike | None, size: int, limit: int = CALIB_IMAGES, *,
                       rendered_ok: bool, flag: str = "--calib") -> tuple[np.ndarray, str]:
    """(uint8 [N, size, size, 3] calibration inputs at the network input, what they are).

    `calib`: a folder of photos (or one photo): at most `limit` of its images (`ganseg.paths.list_images`,
    spread evenly over the sorted list), through `ganseg.pipeline.pre` as the server prepares them.
    None: rendered train-split faces, allowed only when `rendered_ok` (the bundled UNet); otherwise a
    UserError asking for --calib. Every photo is decoded here, before any slow work."""
    from ganseg.pipeline import pre

    if limit < 1:
        raise UserError(f"--calib-images {limit}: calibrate on at least 1 image (64 or more recommended)")
    if calib is None:
        if not rendered_ok:
            raise UserError(f"INT8 calibration needs {flag} DIR for this model: a folder of photos like the ones it "
                            f"will segment (64 or more); rendered faces are the default only for the bundled UNet, "
                            f"which was trained on them")
        from ganseg.faces import render_faces, split_seeds

        images, _ = render_faces(split_seeds("train", limit), resolution=min(max(size, 64), 512))  # renderer range
        return pre(list(images), size).pixels, f"{limit} rendered train-split faces"
    from ganseg.paths import list_images

    files = list_images([calib])
    pick = sorted({int(i) for i in np.linspace(0, len(files) - 1, min(limit, len(files))).round()})
    chosen = [files[i] for i in pick]
    return pre(chosen, size).pixels, f"{len(chosen)} photos from {calib}"


class CalibrationReader:
    """onnxruntime CalibrationDataReader over prepared calibration inputs (float32 NCHW)."""

    def __init__(self, x: np.ndarray, input_name: str = "image", batch: int = CALIB_BATCH):
        from tqdm import tqdm

        self.batches = [{input_name: x[i: i + batch]} for i in range(0, len(x), batch)]
        self._it = iter(tqdm(self.batches, desc="int8 calibration", unit="batch", leave=False))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def final_conv_name(model: onnx.ModelProto) -> str:
    """The node that writes `logits` (the UNet's 1x1 classifier conv)."""
    out = model.graph.output[0].name
    return next(n.name for n in model.graph.node if out in n.output)


def quantize_unet(unet_or_path: Any = None, out: str | os.PathLike | None = None, *,
                  calib: str | os.PathLike | None = None, calib_images: int = CALIB_IMAGES,
                  opset: int = 17, exclude_final: bool = False, calibrate: str = "minmax") -> Path:
    """Export the fp32 UNet, quantize it (QDQ, symmetric int8, per-channel weights) and write `out`.

    `calib`: the folder of photos to calibrate on (`calibration_pixels`; required unless the UNet is
    the bundled default). The file keeps the ONNX UNet contract (float32 `image` in, float32
    `logits` out, same metadata with precision "int8" and a `quantization` entry).
    """
    import onnxruntime.quantization as q
    import torch

    from ganseg.export.onnx_export import export_unet, load_unet_checked
    from ganseg.pipeline import normalize
    from ganseg.unet import DEFAULT_UNET

    if out is None:
        raise UserError("--out is required: the .onnx file to write")
    out = check_out_file(out)
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    if calibrate not in methods:
        raise UserError(f"calibration method {calibrate!r}: use one of {', '.join(methods)}")
    if isinstance(unet_or_path, torch.nn.Module):
        unet, bundled = unet_or_path, False
    else:  # loaded here for its size and identity; export_unet reads the file again (and hashes it)
        unet, file = load_unet_checked(unet_or_path)
        bundled = DEFAULT_UNET.is_file() and Path(file).resolve() == DEFAULT_UNET.resolve()
    size = int((getattr(unet, "meta", None) or {}).get("resolution") or 0)
    if size <= 0:
        raise UserError("the UNet carries no training resolution (meta['resolution']); export it from a "
                        "`ganseg train-unet` run")
    pixels, described = calibration_pixels(calib, size, calib_images, rendered_ok=bundled)  # before slow work
    with tempfile.TemporaryDirectory(prefix="ganseg-int8-") as tmp:
        fp32 = export_unet(unet_or_path, Path(tmp) / "fp32.onnx", "fp32", opset=opset)
        meta = read_metadata(fp32)
        model = onnx.load(str(fp32))
        exclude = [final_conv_name(model)] if exclude_final else []
        reader = CalibrationReader(normalize(pixels), meta.get("input_name", "image"))
        t0 = time.perf_counter()
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its "consider pre-processing" advice: the graph is already tidy
        try:
            q.quantize_static(str(fp32), str(Path(tmp) / "int8.onnx"), reader, quant_format=q.QuantFormat.QDQ,
                              per_channel=True, activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                              op_types_to_quantize=["Conv"], reduce_range=True,
                              nodes_to_exclude=exclude, calibrate_method=methods[calibrate],
                              extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        finally:
            root.setLevel(level)
        seconds = time.perf_counter() - t0
        qmodel = onnx.load(str(Path(tmp) / "int8.onnx"))
    meta.update(precision="int8", quantization={
        "format": "QDQ", "ops": ["Conv"], "activations": "int8 symmetric (zero point 0, per tensor)",
        "weights": "int8 symmetric (7-bit range), per output channel",
        "calibration": f"{calibrate} on {described} at {meta['input_size']}px",
        "excluded_nodes": exclude, "seconds": round(seconds, 1)})
    del qmodel.metadata_props[:]
    set_metadata(qmodel, meta)
    qmodel.doc_string = model.doc_string.replace("(fp32)", "(int8 QDQ)")
    check_model(qmodel)
    return save_model(qmodel, out)


# --------------------------------------------------------------------------------------------
# Measurement: speed and mIoU of fp32 vs int8 in ONNX Runtime (CPU)

def ort_latencies(paths: list[str | os.PathLike], x: np.ndarray, threads: int = 2, warmup: int = 3,
                  runs: int = 15) -> list[float]:
    """Median seconds per run of one batch `x` for each model, ORT CPU with `threads` threads.

    The models run in alternation (after warm-up), so load from other processes on a shared machine
    hits them alike and their ratio stays meaningful even when the absolute times drift.
    """
    from ganseg.pipeline import ort_session

    sessions = [ort_session(p, threads=threads) for p in paths]
    name = sessions[0].get_inputs()[0].name
    for s in sessions:
        for _ in range(warmup):
            s.run(None, {name: x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for s, t in zip(sessions, times):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def onnx_miou(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, batch: int = 8) -> float:
    import torch

    from ganseg.evaluate import confusion_matrix, mean_iou
    from ganseg.pipeline import ort_session
    from ganseg.images import from_uint8

    sess = ort_session(path, threads=2)
    k = len(read_metadata(path)["class_names"])
    conf = torch.zeros(k, k, dtype=torch.int64)
    for i in range(0, len(images), batch):
        logits = sess.run(None, {"image": from_uint8(images[i: i + batch]).numpy()})[0]
        pred = torch.from_numpy(logits.argmax(1))
        conf += confusion_matrix(pred, torch.from_numpy(labels[i: i + batch].astype(np.int64)), k)
    return float(mean_iou(conf))


def int8_report(fp32: str | os.PathLike, int8: str | os.PathLike, n_test: int = 200, threads: int = 2,
                batch: int = 8, runs: int = 20) -> dict:
    """Speed-up (median latency, batch `batch` at input_size) and mIoU change on rendered test faces."""
    from ganseg.faces import render_faces, split_seeds
    from ganseg.images import from_uint8

    size = read_metadata(fp32)["input_size"]
    images, labels = render_faces(split_seeds("test", n_test), resolution=size)
    x = from_uint8(images[:batch]).numpy()
    t32, t8 = ort_latencies([fp32, int8], x, threads, runs=runs)
    m32, m8 = onnx_miou(fp32, images, labels), onnx_miou(int8, images, labels)
    return {"fp32_ms": 1e3 * t32, "int8_ms": 1e3 * t8, "speedup": t32 / t8, "miou_fp32": 100 * m32,
            "miou_int8": 100 * m8, "miou_change_points": 100 * (m8 - m32), "n_test": n_test, "batch": batch,
            "threads": threads, "input_size": size,
            "fp32_mb": Path(fp32).stat().st_size / 1e6, "int8_mb": Path(int8).stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> int:
    """python -m ganseg.export.quantize FP32.onnx INT8.onnx: the speed-up / mIoU report as JSON."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m ganseg.export.quantize", description=main.__doc__)
    p.add_argument("fp32")
    p.add_argument("int8")
    p.add_argument("--n-test", type=int, default=200, help="rendered test-split faces for the mIoU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--runs", type=int, default=20, help="timed runs per model (alternating, after warm-up)")
    a = p.parse_args(argv)
    r = int8_report(a.fp32, a.int8, a.n_test, a.threads, a.batch, a.runs)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
