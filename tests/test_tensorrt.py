"""`ganseg export tensorrt` and the TensorRT plugin.

TensorRT cannot be installed on this project's machines (no GPU; the PyPI `tensorrt` packages are
stubs that download from NVIDIA's index, which these machines cannot reach), so the tests that need
it are skipped here with that reason and run where `tensorrt` imports (NVIDIA's TensorRT or Triton
containers). Everything that does not need TensorRT runs everywhere: argument checks (made before
TensorRT is imported), the exact missing-TensorRT message, optimization-profile shapes, INT8
calibration data, the plugin's agreement with the ONNX node contract, and CMake's clear refusal
without TensorRT headers.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ganseg import ops
from ganseg.errors import UserError
from ganseg.export import tensorrt_build as tb
from ganseg.export.onnx_ops import set_metadata

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "export" / "plugin"
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = ("TensorRT's Python package `tensorrt` is not installed: it cannot be installed on this project's machines "
          "(no GPU; PyPI's tensorrt is a stub that downloads from NVIDIA's index); run in NVIDIA's TensorRT container")


def tiny_unet_onnx(path: Path, int8_qdq: bool = False) -> Path:
    """image [N,3,H,W] -> Conv3x3 -> Relu -> Conv1x1 -> logits [N,5,H,W], with the UNet metadata keys."""
    g = np.random.default_rng(0)
    w1 = numpy_helper.from_array(g.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    w2 = numpy_helper.from_array(g.standard_normal((5, 4, 1, 1)).astype(np.float32) * 0.3, "w2")
    nodes = [helper.make_node("Conv", ["image", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny_unet",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5, "H", "W"])],
                              [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(model, {"input_name": "image", "output_name": "logits", "input_size": 32, "size_multiple": 8,
                         "normalization": {"scale": 1 / 127.5, "offset": -1.0, "layout": "NCHW", "channels": "RGB"}})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def plugin_onnx(path: Path, size: int = 16, activation: str = "lrelu") -> Path:
    """Projected maps p4, p8, p16 [N,3,r,r] (inputs) + bias -> one GansegResampleAccumulate node."""
    from ganseg.export import labeler

    bias = numpy_helper.from_array(np.array([0.5, -0.25, 0.1], np.float32), "bias")
    node = helper.make_node(labeler.PLUGIN_OP, ["p4", "p8", "p16", "bias"], ["out"], domain=labeler.PLUGIN_DOMAIN,
                            plugin_version=labeler.PLUGIN_VERSION, plugin_namespace=labeler.PLUGIN_NAMESPACE,
                            size=size, align_corners=0, activation=activation)
    inputs = [helper.make_tensor_value_info(f"p{r}", TensorProto.FLOAT, ["N", 3, r, r]) for r in (4, 8, 16)]
    graph = helper.make_graph([node], "plugin", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, size, size])], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(labeler.PLUGIN_DOMAIN, 1)])
    onnx.save(model, str(path))
    return path


def cli_args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    tb.add_arguments(p)
    argv = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Everywhere

@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is importable here: the missing-TensorRT message cannot be shown")
def test_cli_without_tensorrt_says_what_is_missing_and_how_to_run_it(tmp_path):
    onnx_path = tiny_unet_onnx(tmp_path / "unet.onnx")
    out = tmp_path / "unet.plan"
    r = subprocess.run([sys.executable, "-m", "ganseg.cli", "export", "tensorrt", "--onnx", str(onnx_path),
                        "--precision", "fp16", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr  # one line, no traceback
    msg = lines[0]
    for needed in ("tensorrt", "No module named", "docker run", "--gpus all", tb.CONTAINER, "pip install -e .",
                   "ganseg export tensorrt", str(onnx_path), "tritonserver"):
        assert needed in msg, f"{needed!r} missing from: {msg}"
    assert not out.exists()


def test_arguments_are_checked_before_tensorrt_is_needed(tmp_path):
    onnx_path = tiny_unet_onnx(tmp_path / "unet.onnx")
    with pytest.raises(UserError, match=r"--onnx.*not found"):
        tb.run(cli_args(onnx=tmp_path / "missing.onnx", out=tmp_path / "x.plan"))
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(UserError, match="not a readable ONNX file"):
        tb.run(cli_args(onnx=tmp_path / "junk.onnx", out=tmp_path / "x.plan"))
    with pytest.raises(UserError, match=r"--out .*\.plan"):
        tb.run(cli_args(onnx=onnx_path, out=tmp_path / "x.onnx"))
    (tmp_path / "adir.plan").mkdir()
    with pytest.raises(UserError, match="existing folder, but a file is expected"):
        tb.run(cli_args(onnx=onnx_path, out=tmp_path / "adir.plan"))
    with pytest.raises(UserError, match="--min-batch <= --opt-batch"):
        tb.run(cli_args(onnx=onnx_path, out=tmp_path / "x.plan", opt_batch=64, max_batch=32))
    with pytest.raises(UserError, match="multiples of 8"):
        tb.run(cli_args(onnx=onnx_path, out=tmp_path / "x.plan", opt_size=36, max_size=40))
    with pytest.raises(UserError, match="--calib-images"):
        tb.run(cli_args(onnx=onnx_path, out=tmp_path / "x.plan", calib_images=0))
    plug = plugin_onnx(tmp_path / "plugin.onnx")
    with pytest.raises(UserError, match=r"--plugin-lib .*GansegResampleAccumulate.*cmake -S"):
        tb.run(cli_args(onnx=plug, out=tmp_path / "x.plan", plugin_lib=tmp_path / "nope.so"))
    assert not list(tmp_path.glob("x.plan*"))


def test_onnx_reading_and_profile_shapes(tmp_path):
    info = tb.read_onnx(tiny_unet_onnx(tmp_path / "unet.onnx"))
    assert [i.name for i in info.inputs] == ["image"] and not info.needs_plugin and not info.has_qdq
    assert info.meta["input_size"] == 32
    shapes = tb.profile_shapes(info, 1, 8, 32)
    assert shapes == {"image": ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))}
    shapes = tb.profile_shapes(info, 1, 4, 16, min_size=16, opt_size=32, max_size=64)
    assert shapes["image"] == ((1, 3, 16, 16), (4, 3, 32, 32), (16, 3, 64, 64))
    with pytest.raises(UserError, match="--min-size <= --opt-size"):
        tb.profile_shapes(info, 1, 1, 1, min_size=64, opt_size=32, max_size=32)
    pinfo = tb.read_onnx(plugin_onnx(tmp_path / "plugin.onnx"))
    assert pinfo.needs_plugin
    assert tb.profile_shapes(pinfo, 1, 2, 4)["p8"] == ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))


def _photo_folder(folder: Path, n: int, hw=(300, 400)) -> Path:
    """n smooth colour photos (PNG and a large JPEG, which the pipeline decodes at reduced scale)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:hw[0], 0:hw[1]] / max(hw)
    for i in range(n):
        img = np.clip(np.stack([np.sin(5 * x + s) + np.cos(4 * y - s) for s in rng.random(3) * 6], -1) * 60 + 128,
                      0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    (folder / "readme.txt").write_text("not a photo")  # ignored: not an image suffix
    return folder


def test_calibration_batches_are_the_users_photos_prepared_as_served(tmp_path):
    from ganseg.export.onnx_ops import sha256_file
    from ganseg.paths import list_images
    from ganseg.pipeline import normalize, pre
    from ganseg.unet import DEFAULT_UNET

    path = tiny_unet_onnx(tmp_path / "unet.onnx")
    info = tb.read_onnx(path)
    shapes = tb.profile_shapes(info, 1, 2, 4)
    with pytest.raises(UserError, match="--calib DIR"):  # not the bundled UNet: no rendered-face default
        tb.calibration_batches(info, shapes, n_images=4)
    photos = _photo_folder(tmp_path / "photos", 5)
    batches = tb.calibration_batches(info, shapes, n_images=4, calib=photos)
    assert len(batches) == 2
    x = np.concatenate([b["image"] for b in batches])
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    files = list_images([photos])
    want = normalize(pre([files[i] for i in (0, 1, 3, 4)], 32).pixels)  # 4 of 5, spread over the folder
    np.testing.assert_array_equal(x, want)
    with pytest.raises(UserError, match="fewer than one calibration batch"):
        tb.calibration_batches(info, tb.profile_shapes(info, 1, 8, 8), n_images=8, calib=_photo_folder(tmp_path / "few", 3))
    with pytest.raises(UserError, match="no such file or folder"):
        tb.calibration_batches(info, shapes, n_images=4, calib=tmp_path / "missing")
    with pytest.raises(UserError, match="--calib only applies"):
        tb.run(cli_args(onnx=path, out=tmp_path / "x.plan", precision="fp16", calib=photos))
    if DEFAULT_UNET.is_file():  # the bundled UNet's graph: rendered train-split faces by default
        info.meta["source_sha256"] = sha256_file(DEFAULT_UNET)
        r = np.concatenate([b["image"] for b in tb.calibration_batches(info, shapes, n_images=4)])
        assert r.shape == (4, 3, 32, 32) and -1.0 <= r.min() < -0.5 and 0.5 < r.max() <= 1.0
        assert not np.allclose(r[0], r[1])


def test_plugin_matches_the_onnx_node_contract():
    """The C++ plugin, the ONNX exporter and ganseg.ops must agree on name, version, namespace,
    attributes and activations (a mismatch means TensorRT's parser cannot find or configure it)."""
    from ganseg.export import labeler

    src = (PLUGIN_DIR / "resample_accumulate_plugin.h").read_text() + (PLUGIN_DIR / "resample_accumulate_plugin.cpp").read_text()
    assert f'kPluginName = "{labeler.PLUGIN_OP}"' in src
    assert f'kPluginVersion = "{labeler.PLUGIN_VERSION}"' in src
    assert f'kPluginNamespace = "{labeler.PLUGIN_NAMESPACE}"' in src
    creator_fields = re.findall(r'mFields\.emplace_back\("(\w+)", nullptr', src)
    assert creator_fields == ["size", "align_corners", "activation"]
    assert set(re.findall(r'if \(name == "(\w+)"\)', src)) == set(ops.ACTIVATIONS) == set(labeler.ACTIVATIONS)
    kernel_h = (ROOT / "ganseg" / "csrc" / "resample_accumulate.h").read_text()
    assert f"kLeakyReLUSlope = {ops.LEAKY_RELU_SLOPE}f" in kernel_h and labeler.LRELU_SLOPE == ops.LEAKY_RELU_SLOPE
    cmake = (PLUGIN_DIR / "CMakeLists.txt").read_text()
    assert "resample_accumulate.cu" in cmake and tb.PLUGIN_LIBRARY == "lib" + "ganseg_trt_plugin" + ".so"


def _tensorrt_headers() -> str | None:
    roots = [os.environ.get("TENSORRT_ROOT", ""), "/usr", "/usr/local/tensorrt", "/opt/tensorrt"]
    for r in filter(None, roots):
        for sub in ("include", "include/x86_64-linux-gnu", "include/aarch64-linux-gnu"):
            if Path(r, sub, "NvInferRuntime.h").is_file():
                return r
    return None


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_plugin_cmake_without_tensorrt_fails_with_a_clear_message(tmp_path):
    if _tensorrt_headers():
        pytest.skip("TensorRT headers are installed here (test_plugin_cmake_builds covers this machine)")
    r = subprocess.run(["cmake", "-S", str(PLUGIN_DIR), "-B", str(tmp_path / "build")], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "TENSORRT_ROOT": ""})
    assert r.returncode != 0
    assert "TensorRT headers (NvInferRuntime.h) not found" in r.stdout + r.stderr


# --------------------------------------------------------------------------------------------
# Where TensorRT is installed (NVIDIA's containers)

@pytest.fixture(scope="module")
def plugin_lib(tmp_path_factory):
    root = _tensorrt_headers()
    if root is None:
        pytest.skip("TensorRT headers (NvInferRuntime.h) not installed: TensorRT cannot be installed on this "
                    "project's machines; the plugin builds in NVIDIA's TensorRT container")
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip("cmake and nvcc are needed to build the plugin")
    build = tmp_path_factory.mktemp("plugin_build")
    cfg = subprocess.run(["cmake", "-S", str(PLUGIN_DIR), "-B", str(build), f"-DTENSORRT_ROOT={root}"],
                         capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    b = subprocess.run(["cmake", "--build", str(build), "-j4"], capture_output=True, text=True, timeout=900)
    assert b.returncode == 0, b.stdout[-4000:] + b.stderr[-4000:]
    return build / tb.PLUGIN_LIBRARY


def test_plugin_cmake_builds(plugin_lib):
    assert plugin_lib.is_file()
    syms = subprocess.run(["nm", "-D", "--defined-only", str(plugin_lib)], capture_output=True, text=True).stdout
    assert "getCreators" in syms and "setLoggerFinder" in syms
    autoreg = plugin_lib.with_name("libganseg_trt_plugin_autoreg.so")
    assert autoreg.is_file()


def _need_trt_gpu():
    trt = pytest.importorskip("tensorrt", reason=NO_TRT)
    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but torch sees no CUDA device (engines need a GPU)")
    return trt


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_engine_matches_onnxruntime(tmp_path, precision, tol):
    _need_trt_gpu()
    import onnxruntime as ort

    onnx_path = tiny_unet_onnx(tmp_path / "unet.onnx")
    out = tmp_path / f"unet_{precision}.plan"
    assert tb.run(cli_args(onnx=onnx_path, out=out, precision=precision, min_batch=1, opt_batch=2, max_batch=4)) == 0
    assert out.stat().st_size > 0 and out.with_suffix(".timing.cache").is_file()
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    got = tb.run_engine(out, {"image": torch.from_numpy(x)})["logits"].float().cpu().numpy()
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    # a rebuild loads the timing cache written by the first
    assert tb.run(cli_args(onnx=onnx_path, out=out, precision=precision, min_batch=1, opt_batch=2, max_batch=4)) == 0


def test_int8_engine_with_calibration(tmp_path):
    _need_trt_gpu()
    onnx_path = tiny_unet_onnx(tmp_path / "unet.onnx")
    out = tmp_path / "unet_int8.plan"
    assert tb.run(cli_args(onnx=onnx_path, out=out, precision="int8", opt_batch=2, max_batch=4, calib_images=8,
                           calib=_photo_folder(tmp_path / "photos", 8))) == 0
    assert out.is_file() and out.with_suffix(".calib.cache").is_file()
    y = tb.run_engine(out, {"image": torch.zeros(2, 3, 32, 32)})["logits"]
    assert y.shape == (2, 5, 32, 32) and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("activation", ["none", "lrelu"])
def test_plugin_engine_matches_ops(tmp_path, plugin_lib, activation):
    _need_trt_gpu()
    onnx_path = plugin_onnx(tmp_path / "plugin.onnx", size=16, activation=activation)
    out = tmp_path / "plugin.plan"
    assert tb.run(cli_args(onnx=onnx_path, out=out, precision="fp32", plugin_lib=plugin_lib, opt_batch=2,
                           max_batch=2)) == 0
    g = torch.Generator().manual_seed(0)
    maps = {f"p{r}": torch.randn(2, 3, r, r, generator=g) for r in (4, 8, 16)}
    got = tb.run_engine(out, maps, plugin_lib=None)["out"].cpu()
    ref = ops.resample_projected([maps[f"p{r}"].double() for r in (4, 8, 16)],
                                 torch.tensor([0.5, -0.25, 0.1], dtype=torch.float64), 16, activation=activation)
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() <= 1e-5
