"""`ganseg export tensorrt`: a TensorRT engine (.plan) from an ONNX file that `ganseg export onnx` wrote.

NOT RUN in this project: TensorRT cannot be installed on its machines (no GPU; the PyPI `tensorrt`
packages are stubs that download the real wheels from NVIDIA's index, which these machines cannot
reach). The code is written against the TensorRT 10 Python API as documented (Builder,
OnnxParser, BuilderConfig, optimization profiles, timing cache, IInt8EntropyCalibrator2, plugin
registry); tests/test_tensorrt.py runs it where `tensorrt` imports and skips elsewhere. Without
TensorRT the command checks every argument, then says exactly what is missing and how to run it
inside NVIDIA's TensorRT or Triton container.

What it does:
- parses the ONNX file with TensorRT's ONNX parser into an explicit-batch network;
- one optimization profile: batch min/opt/max (--min-batch/--opt-batch/--max-batch) and, for
  inputs with dynamic H x W (the UNet), sizes --min-size/--opt-size/--max-size (default: the
  model's `input_size` metadata, the size clients resize to, for all three);
- precision: fp32; fp16 (BuilderFlag.FP16; the fp16 ONNX file works too); int8 (INT8 + FP16
  flags): a QDQ graph (`ganseg export onnx --int8`) is explicit quantization and needs nothing
  more; any other graph is calibrated (IInt8EntropyCalibrator2, deprecated since TensorRT 10.1
  but still supported) at the profile's opt shape, with a calibration cache beside the engine: an
  image input on the user's photos (--calib DIR, prepared as served; rendered faces only by
  default for the bundled UNet), a latent input (labeler `z`) on seeded latents. The photos are
  read and checked before TensorRT is needed;
- a timing cache file (loaded if present, saved after the build) so rebuilds skip kernel timing;
- graphs with the custom `GansegResampleAccumulate` node (`ganseg export onnx --labeler --plugin`)
  need the IPluginV3 library of export/plugin/ (built with CMake against the installed TensorRT);
  it is loaded with `trt.get_plugin_registry().load_library` before parsing;
- the engine is written atomically (ganseg.images.write_atomic).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ganseg.errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
PLUGIN_OP = "GansegResampleAccumulate"
PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
PLUGIN_LIBRARY = "libganseg_trt_plugin.so"
DEFAULT_PLUGIN_PATH = PLUGIN_DIR / "build" / PLUGIN_LIBRARY
CONTAINER = "nvcr.io/nvidia/tensorrt:25.01-py3"          # TensorRT 10.8; any 24.05+ tag has TensorRT 10
TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:25.01-py3"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


# --------------------------------------------------------------------------------------------
# What the ONNX file asks for (pure Python: checked before TensorRT is needed)

@dataclass
class InputSpec:
    name: str
    shape: list[int | str]          # ints, or the dim_param name of a dynamic axis
    dtype: int                      # onnx.TensorProto data type


@dataclass
class OnnxInfo:
    path: Path
    inputs: list[InputSpec]
    meta: dict[str, Any] = field(default_factory=dict)
    needs_plugin: bool = False
    has_qdq: bool = False


def read_onnx(path: str | os.PathLike) -> OnnxInfo:
    from ganseg.export.onnx_ops import load_checked, op_types, parse_metadata

    model = load_checked(path, "--onnx")
    init = {t.name for t in model.graph.initializer}
    inputs = []
    for v in model.graph.input:
        if v.name in init:
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        inputs.append(InputSpec(v.name, dims, t.elem_type))
    if not inputs:
        raise UserError(f"--onnx {path}: the graph has no inputs; re-export it with `ganseg export onnx`")
    ops = op_types(model)
    return OnnxInfo(Path(path), inputs, parse_metadata({p.key: p.value for p in model.metadata_props}),
                    needs_plugin=any(op == PLUGIN_OP for _, op in ops),
                    has_qdq=any(op in QDQ_OPS for _, op in ops))


def profile_shapes(info: OnnxInfo, min_batch: int, opt_batch: int, max_batch: int,
                   min_size: int | None = None, opt_size: int | None = None,
                   max_size: int | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
    """{input name: (min, opt, max) shapes} for the optimization profile; raises UserError on bad ranges.

    Axis 0 is the batch. Other dynamic axes are image H x W (the UNet's): sizes default to the
    model's `input_size` metadata (what clients resize to) and must be multiples of `size_multiple`.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UserError(f"batch sizes must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                        f"{min_batch}, {opt_batch}, {max_batch}")
    default = info.meta.get("input_size")
    sizes = [s if s is not None else default for s in (min_size, opt_size, max_size)]
    mult = int(info.meta.get("size_multiple") or 1)
    shapes = {}
    for spec in info.inputs:
        dynamic = [i for i, d in enumerate(spec.shape) if i > 0 and not (isinstance(d, int) and d > 0)]
        if dynamic:
            if any(s is None for s in sizes):
                raise UserError(f"input {spec.name!r} has dynamic H x W and {info.path} has no input_size metadata: "
                                f"pass --min-size, --opt-size and --max-size")
            if not sizes[0] <= sizes[1] <= sizes[2]:
                raise UserError(f"sizes must satisfy --min-size <= --opt-size <= --max-size, got {sizes}")
            bad = [s for s in sizes if s < 1 or s % mult]
            if bad:
                raise UserError(f"sizes {bad} are not positive multiples of {mult} (the UNet's size_multiple); "
                                f"pass --min-size/--opt-size/--max-size that are")
        triple = []
        for batch, size in zip((min_batch, opt_batch, max_batch), sizes):
            dims = []
            for i, d in enumerate(spec.shape):
                if i == 0:
                    dims.append(batch)
                elif isinstance(d, int) and d > 0:
                    dims.append(d)
                else:
                    dims.append(int(size))
            triple.append(tuple(dims))
        shapes[spec.name] = tuple(triple)
    return shapes


def is_bundled_unet(info: OnnxInfo) -> bool:
    """The ONNX file was exported from the bundled default UNet (its recorded source hash)."""
    from ganseg.export.onnx_ops import sha256_file
    from ganseg.unet import DEFAULT_UNET

    return DEFAULT_UNET.is_file() and info.meta.get("source_sha256") == sha256_file(DEFAULT_UNET)


def calibration_batches(info: OnnxInfo, shapes: dict[str, tuple[tuple[int, ...], ...]], n_images: int,
                        calib: str | os.PathLike | None = None) -> list[dict[str, np.ndarray]]:
    """INT8 calibration inputs at the profile's opt shape (whole batches of the opt batch size).

    An image input gets the user's photos (`calib`, a folder) prepared as served, or for the bundled
    UNet by default rendered train-split faces: `ganseg.export.quantize.calibration_pixels`, the
    same source as `ganseg export onnx --int8`. A latent input (the labeler's `z`) gets seeded
    N(0, 1) latents, what the labeler is fed."""
    from ganseg.export.quantize import calibration_pixels

    opt = {name: s[1] for name, s in shapes.items()}
    batch = next(iter(opt.values()))[0]
    arrays: dict[str, np.ndarray] = {}
    for spec in info.inputs:
        shape = opt[spec.name]
        if len(shape) == 4 and shape[1] == 3:
            from ganseg.pipeline import normalize

            pixels, described = calibration_pixels(calib, int(shape[2]), max(n_images, batch),
                                                   rendered_ok=is_bundled_unet(info))
            if len(pixels) < batch:
                raise UserError(f"--calib {calib}: {described}, fewer than one calibration batch of {batch} "
                                f"(--opt-batch); add photos or lower --opt-batch")
            arrays[spec.name] = np.ascontiguousarray(normalize(pixels))
        elif len(shape) == 2:
            from ganseg.latents import z_from_seeds

            arrays[spec.name] = z_from_seeds(list(range(max(n_images, batch))), shape[1]).numpy().astype(np.float32)
        else:
            raise UserError(f"INT8 calibration: no data source for input {spec.name!r} of shape {list(shape)}; "
                            f"export a QDQ graph with `ganseg export onnx --int8` instead")
    n_batches = min(len(v) for v in arrays.values()) // batch
    return [{k: v[i * batch:(i + 1) * batch] for k, v in arrays.items()} for i in range(n_batches)]


# --------------------------------------------------------------------------------------------
# TensorRT

def missing_tensorrt_message(exc: BaseException) -> str:
    cmd = ("pip install -e . && ganseg export tensorrt " + " ".join(shlex.quote(a) for a in sys.argv[3:])
           if sys.argv[1:3] == ["export", "tensorrt"] else
           "pip install -e . && ganseg export tensorrt --onnx unet.onnx --precision fp16 --out unet.plan")
    return (f"TensorRT's Python package is not importable here ({type(exc).__name__}: {exc}); it needs an NVIDIA GPU "
            f"and NVIDIA's package index (the PyPI 'tensorrt' package only downloads from it). Run this command "
            f"inside NVIDIA's TensorRT container, which has TensorRT 10, CUDA and cmake: "
            f"docker run --rm --gpus all -v \"$PWD\":/w -w /w {CONTAINER} bash -c '{cmd}' "
            f"(paths must lie under the mounted folder; the Triton image {TRITON_CONTAINER} ships TensorRT too)")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(missing_tensorrt_message(exc)) from None
    return trt


def plugin_library(info: OnnxInfo, given: str | None) -> Path | None:
    """The plugin library to load: --plugin-lib, else the default CMake build; None if the graph needs none."""
    if given is None and not info.needs_plugin:
        return None
    path = Path(given) if given else DEFAULT_PLUGIN_PATH
    if not path.is_file():
        build = (f"cmake -S {PLUGIN_DIR} -B {PLUGIN_DIR / 'build'} -DCMAKE_BUILD_TYPE=Release && "
                 f"cmake --build {PLUGIN_DIR / 'build'}")
        raise UserError(f"--plugin-lib {path}: not found; {info.path} has {PLUGIN_OP} nodes, which need the ganseg "
                        f"TensorRT plugin: build it where TensorRT is installed with `{build}` (add "
                        f"-DTENSORRT_ROOT=DIR if TensorRT is not under /usr), or pass --plugin-lib PATH")
    return path


class _Calibrator:
    """Factory for an IInt8EntropyCalibrator2 subclass (the base class exists only once tensorrt imports)."""

    @staticmethod
    def create(trt, batches: list[dict[str, np.ndarray]], cache: Path):
        import torch

        if not torch.cuda.is_available():
            raise UserError("INT8 calibration needs a CUDA device visible to torch (it feeds TensorRT device buffers)")

        class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                trt.IInt8EntropyCalibrator2.__init__(self)
                self.batches = iter(batches)
                self.batch_size = next(iter(batches[0].values())).shape[0]
                self.live: dict[str, Any] = {}  # device buffers stay alive until the next batch

            def get_batch_size(self):
                return self.batch_size

            def get_batch(self, names):
                try:
                    b = next(self.batches)
                except StopIteration:
                    return None
                self.live = {n: torch.from_numpy(b[n]).cuda() for n in names}
                return [int(self.live[n].data_ptr()) for n in names]

            def read_calibration_cache(self):
                return cache.read_bytes() if cache.is_file() else None

            def write_calibration_cache(self, data):
                from ganseg.images import write_atomic

                write_atomic(cache, bytes(data))

        return EntropyCalibrator()


def build_engine(info: OnnxInfo, out: Path, precision: str, shapes: dict, *, timing_cache: Path | None,
                 plugin_lib: Path | None, calib_batches: list[dict[str, np.ndarray]] | None = None,
                 calib_cache: Path | None = None, workspace_gib: float = 4.0, verbose: bool = False) -> dict:
    """Build and write the engine; returns a summary. Needs TensorRT (and a GPU).

    int8 on a graph without QDQ needs `calib_batches` (`calibration_batches`, made before TensorRT
    is imported so bad calibration photos are reported first)."""
    from ganseg.images import write_atomic

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    if plugin_lib is not None:
        handle = trt.get_plugin_registry().load_library(str(plugin_lib))
        if handle is None:
            raise UserError(f"--plugin-lib {plugin_lib}: TensorRT could not load it (built against another "
                            f"TensorRT version, or already loaded?); rebuild it with CMake in this environment")
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(info.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"--onnx {info.path}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in shapes.items():
        profile.set_shape(name, mn, opt, mx)
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    calibrated = False
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not info.has_qdq:  # implicit quantization: calibrate at the opt shape
            if not calib_batches:
                raise ValueError("int8 without QDQ needs calib_batches (calibration_batches)")
            config.int8_calibrator = _Calibrator.create(trt, calib_batches,
                                                        calib_cache or out.with_suffix(".calib.cache"))
            config.set_calibration_profile(profile)
            calibrated = True
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {info.path} (rerun with --verbose for its log)")
    engine_bytes = bytes(memoryview(serialized))
    write_atomic(out, engine_bytes)
    if timing_cache is not None:
        write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return {"engine": str(out), "bytes": len(engine_bytes), "precision": precision, "tensorrt": trt.__version__,
            "profile": {k: [list(s) for s in v] for k, v in shapes.items()}, "plugin_lib": str(plugin_lib or ""),
            "quantization": ("explicit (QDQ)" if info.has_qdq else "calibrated" if calibrated else None)
            if precision == "int8" else None}


def run_engine(plan: str | os.PathLike | bytes, feeds: dict[str, "Any"], plugin_lib: Path | None = None) -> dict:
    """Run a serialized engine once on CUDA torch tensors (TensorRT 10 name-based I/O); returns outputs.

    For tests and quick checks; a server keeps the engine and context alive instead."""
    import torch

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    if plugin_lib is not None:
        trt.get_plugin_registry().load_library(str(plugin_lib))
    data = plan if isinstance(plan, (bytes, bytearray)) else Path(plan).read_bytes()
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine (other TensorRT version or GPU?)")
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    keep = {}
    for n in inputs:
        t = feeds[n].contiguous().cuda()
        keep[n] = t
        ctx.set_input_shape(n, tuple(t.shape))
        ctx.set_tensor_address(n, t.data_ptr())
    outputs = {}
    dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
              trt.uint8: torch.uint8, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        dtypes[trt.bfloat16] = torch.bfloat16
    for n in names:
        if n in inputs:
            continue
        out = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=dtypes[engine.get_tensor_dtype(n)], device="cuda")
        outputs[n] = out
        ctx.set_tensor_address(n, out.data_ptr())
    stream = torch.cuda.current_stream()
    if not ctx.execute_async_v3(stream.cuda_stream):
        raise RuntimeError("TensorRT execute_async_v3 failed")
    stream.synchronize()
    return outputs


# --------------------------------------------------------------------------------------------
# CLI

def add_arguments(p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    p.add_argument("--onnx", required=True, help="ONNX file from `ganseg export onnx` (UNet or labeler)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="int8: explicit if the graph is QDQ (`export onnx --int8`), else calibrated on --calib photos")
    p.add_argument("--out", required=True, help="engine file to write (.plan)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--min-size", type=int, default=None, help="dynamic H x W inputs: smallest side (default: input_size)")
    p.add_argument("--opt-size", type=int, default=None, help="dynamic H x W inputs: side tuned for (default: input_size)")
    p.add_argument("--max-size", type=int, default=None, help="dynamic H x W inputs: largest side (default: input_size)")
    p.add_argument("--timing-cache", default=None,
                   help="timing cache file, loaded if present and saved after the build (default: OUT.timing.cache)")
    p.add_argument("--plugin-lib", default=None,
                   help=f"the GansegResampleAccumulate plugin library (default: {DEFAULT_PLUGIN_PATH} if the graph "
                        f"needs it)")
    p.add_argument("--calib", default=None, metavar="DIR",
                   help="int8 without QDQ: folder of your photos to calibrate on (required unless the graph is the "
                        "bundled default UNet's, which calibrates on rendered faces; latent inputs use seeded latents)")
    p.add_argument("--calib-images", type=int, default=256, help="int8 without QDQ: at most this many calibration inputs")
    p.add_argument("--calib-cache", default=None, help="int8 calibration cache (default: OUT.calib.cache)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace memory limit")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


def run(args: argparse.Namespace) -> int:
    from ganseg.paths import check_out_file

    out = Path(args.out)
    if out.suffix not in (".plan", ".engine"):
        raise UserError(f"--out {out}: name the engine file .plan (e.g. {out.with_suffix('.plan')})")
    info = read_onnx(args.onnx)
    check_out_file(out, "--out")
    timing_cache = Path(args.timing_cache) if args.timing_cache else out.with_suffix(".timing.cache")
    check_out_file(timing_cache, "--timing-cache")
    if args.calib_images < 1:
        raise UserError(f"--calib-images must be >= 1, got {args.calib_images}")
    if args.workspace_gib <= 0:
        raise UserError(f"--workspace-gib must be > 0, got {args.workspace_gib}")
    shapes = profile_shapes(info, args.min_batch, args.opt_batch, args.max_batch,
                            args.min_size, args.opt_size, args.max_size)
    plugin = plugin_library(info, args.plugin_lib)
    calibrated = args.precision == "int8" and not info.has_qdq
    if args.calib is not None and not calibrated:
        raise UserError(f"--calib only applies to --precision int8 on a graph without QDQ nodes ({args.onnx} "
                        f"{'has them: its quantization is explicit' if info.has_qdq else 'is built as ' + args.precision})"
                        f"; drop --calib")
    batches = calibration_batches(info, shapes, args.calib_images, args.calib) if calibrated else None
    summary = build_engine(info, out, args.precision, shapes, timing_cache=timing_cache, plugin_lib=plugin,
                           calib_batches=batches,
                           calib_cache=Path(args.calib_cache) if args.calib_cache else None,
                           workspace_gib=args.workspace_gib, verbose=args.verbose)
    print(f"wrote {out} ({summary['bytes'] / 2**20:.1f} MiB, {args.precision}, TensorRT {summary['tensorrt']}; "
          f"profile {summary['profile']})")
    return 0
