"""Serving: the Triton model repository on the REAL Triton server (nvidia-pytriton's tritonserver).

One module-scoped server on free loopback ports serves a repository built from a tiny random UNet
with both pipelines (BLS `ganseg_segment*` and ensemble `ganseg_segment*_ensemble`); it is stopped
after the module and must leave no process behind. Masks are compared with in-process ONNX Runtime
on the same ONNX file. Pure pre/post-processing and config generation are tested without a server.
"""
from __future__ import annotations

import functools
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from procs import read_until  # noqa: E402

from ganseg.errors import UserError  # noqa: E402
from ganseg.images import decode_rgb, overlay
from ganseg.pipeline import overlay_jpeg
from ganseg import pipeline as P
from ganseg.export.triton_repository import ServingConfig, build_repository, repository_files
from ganseg.serving.server import TritonServer, _group_pids

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("tritonclient.http")
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_BATCH = 8
ERROR_BOUND_S = 20.0  # every bad request must be answered (with an error) within this time
RSS_GROWTH_BOUND = 64 * 2**20  # server + stubs may grow at most this much over 500 requests


# --------------------------------------------------------------------------------------------
# helpers

def _png(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: np.ndarray, exif=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour image (so JPEG round trips stay image-like)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.random(3)[:, None, None] * np.stack([np.sin(6 * x + s) + np.cos(5 * y - s) for s in rng.random(3) * 6])
    return np.clip((base.transpose(1, 2, 0) + 2) * 60 + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _grey_png(w: int, h: int, rows: int | None = None) -> bytes:
    """An 8-bit grey PNG of w x h black pixels, compressed row by row (no w*h buffer); `rows`
    < h writes only that many rows (a bomb whose header promises more than the data holds)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (w + 1)
    idat = b"".join(comp.compress(row) for _ in range(h if rows is None else rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _bytes_input(mod, items: list[bytes], shape=None):
    arr = np.array(items, dtype=object).reshape(shape or [len(items), 1])
    inp = mod.InferInput("IMAGE", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def _infer_bytes(client, mod, model: str, data: bytes, outputs=("MASK",), **kw):
    r = client.infer(model, [_bytes_input(mod, [data])], outputs=[mod.InferRequestedOutput(o) for o in outputs], **kw)
    return r


def _stats(client, model: str) -> tuple[int, int]:
    s = client.get_inference_statistics(model).model_stats[0]
    return int(s.inference_count), int(s.execution_count)


# --------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    import torch

    from ganseg.labels import CLASS_NAMES
    from ganseg.unet import UNet, UNetConfig, save_unet

    d = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    unet = UNet(UNetConfig(num_classes=len(CLASS_NAMES), width=8, depth=3)).eval()
    from ganseg.images import from_uint8

    with torch.no_grad():  # random batch-norm affines and a standardized head: every class shows up
        for m in unet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(0, 1)
                m.bias.normal_(0, 0.5)
        logits = unet(from_uint8(np.stack([_photo(64, 64, 1000 + i) for i in range(8)])))
        mu, sd = logits.mean((0, 2, 3)), logits.std((0, 2, 3))
        unet.head.weight.div_(sd[:, None, None, None])
        unet.head.bias.sub_(mu).div_(sd)
    save_unet(unet, d / "run" / "unet.safetensors", list(CLASS_NAMES), extra={"resolution": 64})
    # the BLS call to ganseg_unet (what GPU repositories use) and a long queue delay (batches form
    # reliably); tests/test_pipeline.py serves the CPU defaults (inline UNet, no queue delay)
    cfg = ServingConfig(max_batch=MAX_BATCH, unet_max_batch=16, preferred_batch=[4, 8], queue_delay_us=5000,
                        ort_threads=1, inline_unet=False)
    return build_repository(d / "repo", unet=d / "run", pipeline="both", cfg=cfg)


@pytest.fixture(scope="module")
def reference(repo) -> P.OnnxSegmenter:
    return P.OnnxSegmenter(repo / "ganseg_unet" / "1" / "model.onnx")


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo, ready_timeout=120) as srv:
        pgid = srv.pid
        yield srv
    assert not _group_pids(pgid), "processes of the server's group were left running"


@pytest.fixture(scope="module")
def clients(server):
    return {"http": (httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=60)),
            "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc_url))}


# --------------------------------------------------------------------------------------------
# without a server

def _config(path: Path):
    """A written config.pbtxt parsed back into Triton's ModelConfig protobuf."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def test_pipeline_matches_the_torch_normalization() -> None:
    import torch  # noqa: F401 - from_uint8 is the torch reference of the normalization

    from ganseg.images import from_uint8, resize_rgb

    imgs = [_photo(50, 70, 1), _photo(64, 64, 2), _photo(130, 40, 3)]
    batch = P.pre(imgs, 32)
    assert batch.pixels.shape == (3, 32, 32, 3) and batch.pixels.dtype == np.uint8
    assert batch.sizes == [(50, 70), (64, 64), (130, 40)] and batch.previews == [None] * 3
    assert np.array_equal(batch.pixels[0], resize_rgb(imgs[0], 32))
    assert np.array_equal(batch.x, from_uint8(batch.pixels).numpy())  # bit-identical to the torch path
    logits = np.random.default_rng(1).normal(size=(3, 10, 32, 32)).astype(np.float32)
    assert np.array_equal(P.argmax_labels(logits), torch.from_numpy(logits).argmax(1).numpy())
    back = [r.mask for r in P.post(logits, batch)]
    assert [b.shape for b in back] == [(50, 70), (64, 64), (130, 40)]
    labels = P.argmax_labels(logits)
    assert set(np.unique(back[0])) <= set(np.unique(labels[0]))  # nearest: no new label values
    assert np.array_equal(P.resize_labels(labels[0], (32, 32)), labels[0])


def test_request_checks_raise_user_errors() -> None:
    good = _png(_photo(20, 30, 0))
    assert P.pre([good], 16, names=["x"]).sizes == [(20, 30)]
    for bad, what in ((b"", "empty"), (b"GIF89a garbage", "not a readable image")):
        with pytest.raises(UserError, match=what):
            P.pre([bad], 16, names=["IMAGE"])
    with pytest.raises(UserError, match="above the limit"):
        P.pre([_grey_png(200, 200)], 16, names=["IMAGE"], max_pixels=10_000)
    with pytest.raises(UserError, match="different sizes"):
        P.same_size([(4, 4), (4, 5)], "IMAGE")
    with pytest.raises(UserError, match="dtype"):
        P.check_raw(np.zeros((1, 4, 4, 3), np.float32), "IMAGE")
    with pytest.raises(UserError, match="shape"):
        P.check_raw(np.zeros((1, 4, 4, 4), np.uint8), "IMAGE")
    with pytest.raises(UserError, match="empty batch"):
        P.check_raw(np.zeros((0, 4, 4, 3), np.uint8), "IMAGE")


def test_served_code_imports_without_torch() -> None:
    """Every Python-backend process imports these; torch there would cost seconds and ~230 MB each."""
    code = ("import sys, ganseg.serving.triton_models, ganseg.pipeline, ganseg.serving.server; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_repository_writer_is_an_export_step() -> None:
    """ganseg.export.triton_repository writes repositories without importing ganseg.serving (serving
    may import export, never the reverse), and the installed package ships no load generator."""
    code = ("import sys, ganseg.export.triton_repository, ganseg.export.cli; "
            "bad = [m for m in sys.modules if m.startswith('ganseg.serving')]; assert not bad, bad; "
            "import importlib.util as u; "
            "assert u.find_spec('ganseg.serving.repository') is None and u.find_spec('ganseg.serving.bench') is None; "
            "import ganseg.serving.client as c; assert not hasattr(c, 'latency_run')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_export_triton_cli(repo, tmp_path, capsys) -> None:
    from ganseg.cli import main

    onnx = repo / "ganseg_unet" / "1" / "model.onnx"
    assert main(["export", "triton", "--onnx", str(onnx), "--repo", str(tmp_path / "r"), "--max-batch", "4",
                 "--preferred-batch", "2", "4", "--ort-threads", "3", "--unet-instances", "2"]) == 0
    assert "ganseg serve --repo" in capsys.readouterr().out
    unet = _config(tmp_path / "r" / "ganseg_unet" / "config.pbtxt")
    assert unet.instance_group[0].count == 2 and unet.parameters["ort_threads"].string_value == "3"
    seg = _config(tmp_path / "r" / "ganseg_segment" / "config.pbtxt")
    assert seg.max_batch_size == 4 and list(seg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert main(["export", "triton", "--onnx", str(onnx), "--repo", str(tmp_path / "r"), "--preferred-batch", "16"]) == 2
    assert "--preferred-batch" in capsys.readouterr().err


def test_repository_configs_from_onnx_metadata(repo) -> None:
    from ganseg.export.onnx_export import read_metadata

    meta = read_metadata(repo / "ganseg_unet" / "1" / "model.onnx")
    seg, unet = _config(repo / "ganseg_segment" / "config.pbtxt"), _config(repo / "ganseg_unet" / "config.pbtxt")
    s = meta["input_size"]
    assert list(unet.input[0].dims) == [3, s, s] and list(unet.output[0].dims) == [len(meta["class_names"]), s, s]
    assert json.loads(seg.parameters["class_names"].string_value) == meta["class_names"]
    assert json.loads(seg.parameters["palette"].string_value) == meta["palette"]
    assert seg.max_batch_size == MAX_BATCH and seg.HasField("dynamic_batching")
    assert int(seg.parameters["max_pixels"].string_value) == P.MAX_PIXELS
    outs = {o.name: list(o.dims) for o in seg.output}
    assert outs == {"MASK": [-1, -1], "MASK_LOWRES": [s, s], "MASK_SIZE": [2], "OVERLAY": [1]}
    raw = _config(repo / "ganseg_segment_raw" / "config.pbtxt")
    assert list(raw.input[0].dims) == [-1, -1, 3] and raw.input[0].allow_ragged_batch
    assert _config(repo / "ganseg_segment_ensemble" / "config.pbtxt").platform == "ensemble"
    assert (repo / "ganseg_unet" / "1" / "model.py").read_text().count("UNetOnnx") == 2
    rec = json.loads((repo / "ganseg_repository.json").read_text())
    assert rec["pipeline"] == "both" and rec["input_size"] == meta["input_size"]


def test_gpu_targets_and_repo_errors(repo, tmp_path) -> None:
    onnx = repo / "ganseg_unet" / "1" / "model.onnx"
    gpu = build_repository(tmp_path / "gpu", onnx=onnx, target="onnxruntime-gpu")
    cfg = _config(gpu / "ganseg_unet" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert (gpu / "ganseg_unet" / "1" / "model.onnx").is_file() and not (gpu / "ganseg_unet" / "1" / "model.py").exists()
    seg = _config(gpu / "ganseg_segment" / "config.pbtxt")
    assert seg.instance_group[0].kind == seg.instance_group[0].KIND_CPU  # entry models stay Python on CPU
    assert seg.HasField("dynamic_batching") and "inline_unet" not in seg.parameters  # GPU: batch, call ganseg_unet
    cpu = _config(build_repository(tmp_path / "cpu", onnx=onnx) / "ganseg_segment" / "config.pbtxt")
    assert cpu.parameters["inline_unet"].string_value == "1" and cpu.dynamic_batching.max_queue_delay_microseconds == 0
    with pytest.raises(UserError, match="--plan"):
        build_repository(tmp_path / "trt", onnx=onnx, target="tensorrt")
    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"engine bytes")
    trt = build_repository(tmp_path / "trt", onnx=onnx, target="tensorrt", plan=plan)
    assert _config(trt / "ganseg_unet" / "config.pbtxt").platform == "tensorrt_plan"
    assert sorted(p.name for p in (trt / "ganseg_unet" / "1").iterdir()) == ["model.plan"]
    # switching the pipeline removes the other pipeline's models (Triton would load them)
    ens = build_repository(tmp_path / "gpu", onnx=onnx, target="cpu", pipeline="ensemble")
    assert sorted(p.parent.name for p in ens.glob("*/config.pbtxt")) == [
        "ganseg_post", "ganseg_pre", "ganseg_pre_raw", "ganseg_segment", "ganseg_segment_raw", "ganseg_unet"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        build_repository(tmp_path / "afile", onnx=onnx)
    with pytest.raises(UserError, match="preferred-batch"):
        build_repository(tmp_path / "x", onnx=onnx, cfg=ServingConfig(max_batch=4, preferred_batch=[8]))
    for target, pipeline in (("onnxruntime-gpu", "bls"), ("cpu", "ensemble")):  # the inline UNet is ORT on CPU in BLS
        with pytest.raises(UserError, match="--inline-unet"):
            build_repository(tmp_path / "y", onnx=onnx, target=target, pipeline=pipeline,
                             cfg=ServingConfig(inline_unet=True))
    knobs = build_repository(tmp_path / "k", onnx=onnx, cfg=ServingConfig(inline_unet=True, rate_limiter=True,
                                                                         dynamic_batching=False))
    seg = _config(knobs / "ganseg_segment" / "config.pbtxt")
    assert seg.parameters["inline_unet"].string_value == "1" and not seg.HasField("dynamic_batching")
    assert seg.instance_group[0].rate_limiter.resources[0].name == "ganseg_cpu"


def test_committed_model_repository_is_what_export_writes() -> None:
    """model_repository/ (committed) == `ganseg export triton --repo model_repository` for the bundled
    default UNet (the .onnx weights are generated, not committed)."""
    from ganseg.export.onnx_export import unet_to_onnx  # noqa: F401 - export must be importable
    from ganseg.unet import DEFAULT_UNET, load_unet

    committed = Path(__file__).resolve().parents[1] / "model_repository"
    if not DEFAULT_UNET.is_file():
        pytest.skip("the bundled default UNet is not installed")
    unet = load_unet()
    from ganseg.labels import palette_for

    spec = P.UNetSpec(input_size=int(unet.meta["resolution"]), class_names=list(unet.class_names),
                      palette=np.asarray(palette_for(unet.cfg.num_classes), np.uint8), size_multiple=2 ** unet.cfg.depth)
    want = repository_files(spec, ServingConfig())
    for rel, text in want.items():
        assert (committed / rel).is_file(), f"model_repository/{rel} missing: run `ganseg export triton --repo model_repository`"
        assert (committed / rel).read_text() == text, f"model_repository/{rel} is stale: rerun `ganseg export triton --repo model_repository`"


# --------------------------------------------------------------------------------------------
# against the real server

@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_png_and_jpeg_masks_equal_onnxruntime(server, clients, reference, protocol) -> None:
    mod, client = clients[protocol]
    cases = {"png 50x70": _png(_photo(50, 70, 1)), "jpeg 90x120": _jpeg(_photo(90, 120, 2)),
             "png 64x64": _png(_photo(64, 64, 3)), "jpeg 33x47": _jpeg(_photo(33, 47, 4))}
    for name, data in cases.items():
        img = decode_rgb(data, name)
        want = reference.segment([img])[0]
        for model in ("ganseg_segment", "ganseg_segment_ensemble"):
            r = _infer_bytes(client, mod, model, data, outputs=("MASK", "OVERLAY"))
            mask = r.as_numpy("MASK")
            assert mask.shape == (1, *img.shape[:2]) and mask.dtype == np.uint8, (name, model)
            assert np.array_equal(mask[0], want), f"{model} {protocol} {name}: mask differs from ONNX Runtime"
            # OVERLAY: the pipeline's JPEG of this photo's overlay, byte for byte (libjpeg is deterministic)
            served = bytes(r.as_numpy("OVERLAY").reshape(-1)[0])
            assert served == overlay_jpeg(img, want, reference.spec.palette), f"{model} {protocol} {name}: OVERLAY"
            ov = np.asarray(Image.open(io.BytesIO(served)).convert("RGB"), np.int16)
            # and it is that overlay: q90 4:4:4 on these noisy photos is ~6 levels off on average (4:2:0 was ~27)
            assert np.abs(ov - overlay(img[None], want[None], reference.spec.palette)[0]).mean() < 10
        for model in ("ganseg_segment_raw", "ganseg_segment_raw_ensemble"):
            inp = mod.InferInput("IMAGE", [1, *img.shape], "UINT8")
            inp.set_data_from_numpy(img[None])
            mask = client.infer(model, [inp], outputs=[mod.InferRequestedOutput("MASK")]).as_numpy("MASK")
            assert np.array_equal(mask[0], want), f"{model} {protocol} {name}"
    assert len(np.unique(want)) > 1  # the test net labels more than one class


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_compact_mask_transport_expands_to_mask_byte_for_byte(clients, protocol) -> None:
    """MASK_LOWRES + MASK_SIZE (what `ganseg client` asks for) -> pipeline.resize_labels -> MASK exactly;
    a BLS model returns only the outputs asked for."""
    from ganseg.serving.client import infer_once

    mod, client = clients[protocol]
    cases = [_png(_photo(50, 70, 31)), _jpeg(_photo(300, 170, 32)), _jpeg(_photo(1200, 1600, 33))]
    for data in cases:
        for model in ("ganseg_segment", "ganseg_segment_ensemble"):
            full = _infer_bytes(client, mod, model, data).as_numpy("MASK")[0]
            r = _infer_bytes(client, mod, model, data, outputs=("MASK_LOWRES", "MASK_SIZE", "OVERLAY"))
            low, size = r.as_numpy("MASK_LOWRES"), r.as_numpy("MASK_SIZE")
            assert low.dtype == np.uint8 and low.shape[1:] == (64, 64) and size.dtype == np.int32  # the net's 64²
            assert tuple(size[0]) == full.shape
            assert np.array_equal(P.resize_labels(low[0], tuple(size[0])), full), model
            if model == "ganseg_segment":
                assert r.as_numpy("MASK") is None and r.as_numpy("OVERLAY") is not None
        every = client.infer("ganseg_segment", [_bytes_input(mod, [data])])  # no outputs named: Triton asks for all
        assert all(every.as_numpy(n) is not None for n in ("MASK", "MASK_LOWRES", "MASK_SIZE", "OVERLAY"))
        got, _ = infer_once(client, protocol, "ganseg_segment", data, overlay=False)  # the client's default
        assert np.array_equal(got, full)
        assert np.array_equal(infer_once(client, protocol, "ganseg_segment", data, overlay=False, mask="raw")[0], full)


def test_unusual_images_come_back_at_their_own_size(clients, reference) -> None:
    mod, client = clients["grpc"]
    grey16 = (np.random.default_rng(0).random((40, 60)) * 65535).astype(np.uint16)
    rgba = np.dstack([_photo(30, 20, 5), np.full((30, 20), 128, np.uint8)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when shown
    cases = {"16-bit grey png": (_png(grey16), (40, 60)), "rgba png": (_png(rgba), (30, 20)),
             "exif-rotated jpeg": (_jpeg(_photo(24, 56, 6), exif=exif.tobytes()), (56, 24))}
    for name, (data, size) in cases.items():
        mask = _infer_bytes(client, mod, "ganseg_segment", data).as_numpy("MASK")[0]
        assert mask.shape == size, name
        assert np.array_equal(mask, reference.segment([decode_rgb(data, name)])[0]), name


def test_two_same_size_images_in_one_request(clients, reference) -> None:
    mod, client = clients["grpc"]
    a, b = _photo(40, 50, 7), _photo(40, 50, 8)
    mask = client.infer("ganseg_segment", [_bytes_input(mod, [_png(a), _png(b)])]).as_numpy("MASK")
    assert mask.shape == (2, 40, 50)
    assert np.array_equal(mask, np.stack(reference.segment([a, b])))


@pytest.mark.parametrize("model", ["ganseg_segment", "ganseg_segment_ensemble"])
def test_concurrent_requests_are_batched(server, reference, model) -> None:
    stats_client = grpcclient.InferenceServerClient(server.grpc_url)
    stat_model = "ganseg_segment" if model == "ganseg_segment" else "ganseg_unet"
    n0, e0 = _stats(stats_client, stat_model)
    sizes = [(40 + 7 * i, 64 + 5 * (i % 5)) for i in range(32)]  # all different sizes
    images = [_photo(h, w, 100 + i) for i, (h, w) in enumerate(sizes)]
    local = threading.local()

    def send(img):
        if not hasattr(local, "c"):
            local.c = grpcclient.InferenceServerClient(server.grpc_url)
        return _infer_bytes(local.c, grpcclient, model, _png(img)).as_numpy("MASK")[0]

    with ThreadPoolExecutor(16) as pool:
        masks = list(pool.map(send, images))
    for img, mask in zip(images, masks):
        assert np.array_equal(mask, reference.segment([img])[0])
    n1, e1 = _stats(stats_client, stat_model)
    assert n1 - n0 >= 32
    assert e1 - e0 < n1 - n0, f"{model}: {e1 - e0} executions for {n1 - n0} requests: no dynamic batching"


@functools.lru_cache(maxsize=1)
def _bad_payloads() -> dict[str, tuple[bytes, str]]:
    good = _png(_photo(48, 48, 9))
    return {
        "zero-byte": (b"", "empty"),
        "non-image bytes": (b"Hello, this is plain text, not a picture." * 10, "not a readable image"),
        "corrupt": (good[:40] + bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)), "corrupt|not a readable"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "decompression bomb": (_grey_png(100_000, 100_000, rows=2), "too large|above the limit"),
        "10000x10000": (_grey_png(10_000, 10_000), "above the limit"),
    }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_images_get_a_clear_error_in_bounded_time(clients, protocol) -> None:
    mod, client = clients[protocol]
    for model in ("ganseg_segment", "ganseg_segment_ensemble"):
        for name, (data, pattern) in _bad_payloads().items():
            t = time.monotonic()
            with pytest.raises(InferenceServerException) as err:
                _infer_bytes(client, mod, model, data)
            assert time.monotonic() - t < ERROR_BOUND_S, f"{name}: answered too late"
            msg = err.value.message()
            assert "IMAGE" in msg and any(p in msg for p in pattern.split("|")), f"{model} {name}: {msg}"
            assert "\n" not in msg
    assert client.is_server_live() and client.is_server_ready()


def test_bad_requests_in_a_batch_do_not_fail_the_others(server, reference) -> None:
    """Good and bad requests sent together land in the same dynamic batches; only the bad fail."""
    bads = [d for d, _ in _bad_payloads().values()]
    goods = [_photo(40 + 3 * i, 60, 200 + i) for i in range(len(bads))]
    jobs = [(i, _png(img), True) for i, img in enumerate(goods)] + [(i, d, False) for i, d in enumerate(bads)]
    jobs = [jobs[k // 2 + (len(jobs) // 2 if k % 2 else 0)] for k in range(len(jobs))]  # interleave
    for model in ("ganseg_segment", "ganseg_segment_ensemble"):
        stats_client = grpcclient.InferenceServerClient(server.grpc_url)
        stat_model = "ganseg_segment" if model == "ganseg_segment" else "ganseg_pre"
        n0, e0 = _stats(stats_client, stat_model)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        results: dict[int, object] = {}
        done = threading.Event()
        lock = threading.Lock()

        def callback(k, result=None, error=None):
            with lock:
                results[k] = error if error is not None else result.as_numpy("MASK")[0]
                if len(results) == len(jobs):
                    done.set()

        for k, (_, data, _) in enumerate(jobs):
            client.async_infer(model, [_bytes_input(grpcclient, [data])], callback=functools.partial(callback, k),
                               outputs=[grpcclient.InferRequestedOutput("MASK")])
        assert done.wait(ERROR_BOUND_S), "not every request was answered in time"
        for k, (i, _, ok) in enumerate(jobs):
            if ok:
                assert isinstance(results[k], np.ndarray), f"{model}: good request {i} failed: {results[k]}"
                assert np.array_equal(results[k], reference.segment([goods[i]])[0])
            else:
                assert isinstance(results[k], InferenceServerException), f"{model}: bad request {i} succeeded"
        n1, e1 = _stats(stats_client, stat_model)
        assert e1 - e0 < len(jobs), f"{model}: requests were not batched ({e1 - e0} executions)"
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_dtype_shape_and_batch_size_are_rejected(clients, protocol) -> None:
    mod, client = clients[protocol]
    good = _png(_photo(32, 32, 10))

    def rejected(model, inp, pattern):
        t = time.monotonic()
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, [inp])
        assert time.monotonic() - t < ERROR_BOUND_S
        assert any(p in err.value.message() for p in pattern.split("|")), err.value.message()

    for model in ("ganseg_segment_raw", "ganseg_segment_raw_ensemble"):
        inp = mod.InferInput("IMAGE", [1, 8, 8, 3], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
        rejected(model, inp, "data-type")
        for shape in ([1, 8, 8, 4], [1, 8, 8]):
            inp = mod.InferInput("IMAGE", shape, "UINT8")
            inp.set_data_from_numpy(np.zeros(shape, np.uint8))
            rejected(model, inp, "shape")
        inp = mod.InferInput("IMAGE", [0, 8, 8, 3], "UINT8")
        inp.set_data_from_numpy(np.zeros((0, 8, 8, 3), np.uint8))
        rejected(model, inp, "empty batch|byte size mismatch")  # Triton rejects batch 0 before the model
        inp = mod.InferInput("IMAGE", [MAX_BATCH + 1, 8, 8, 3], "UINT8")
        inp.set_data_from_numpy(np.zeros((MAX_BATCH + 1, 8, 8, 3), np.uint8))
        rejected(model, inp, f"batch-size must be <= {MAX_BATCH}")
    for model in ("ganseg_segment", "ganseg_segment_ensemble"):
        inp = mod.InferInput("IMAGE", [1, 1], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, 1), np.uint8))
        rejected(model, inp, "data-type")
        rejected(model, _bytes_input(mod, [good, good], shape=[1, 2]), "shape")
        rejected(model, _bytes_input(mod, [], shape=[0, 1]), "expected 1 string elements|empty batch")
        rejected(model, _bytes_input(mod, [good] * (MAX_BATCH + 1)), f"batch-size must be <= {MAX_BATCH}")
        rejected(model, _bytes_input(mod, [good, _png(_photo(20, 20, 1))]), "different sizes")
    assert client.is_server_live() and client.is_server_ready()
    assert _infer_bytes(client, mod, "ganseg_segment", good).as_numpy("MASK").shape == (1, 32, 32)


def test_500_requests_at_concurrency_16(server) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # measurement code: not installed
    from triton_load import latency_run, process_tree_rss

    data = _png(_photo(96, 80, 11))
    latency_run(server.grpc_url, "grpc", "ganseg_segment", data, concurrency=16, requests=48, warmup=0)
    rss0 = process_tree_rss(server.pid)
    r = latency_run(server.grpc_url, "grpc", "ganseg_segment", data, concurrency=16, requests=500, warmup=0)
    rss1 = process_tree_rss(server.pid)
    assert r["errors"] == 0 and r["n"] == 500
    assert rss1 - rss0 < RSS_GROWTH_BOUND, f"server RSS grew {(rss1 - rss0) / 2**20:.1f} MiB over 500 requests"
    print(f"500 req @16: p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms {r['img_per_s']:.1f} img/s; "
          f"RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB")


# --------------------------------------------------------------------------------------------
# client CLI

def test_client_cli_writes_masks_and_overlays(server, reference, tmp_path, capsys) -> None:
    from ganseg.labels import load_label_png
    from ganseg.serving import client as cli

    src = tmp_path / "in"
    src.mkdir()
    imgs = {"a": _photo(50, 70, 20), "b": _photo(64, 48, 21)}
    for k, im in imgs.items():
        (src / f"{k}.png").write_bytes(_png(im))
    (src / "c.jpg").write_bytes(_jpeg(_photo(30, 30, 22)))
    out = tmp_path / "out"
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        args = p.parse_args([str(src), "--url", url, "--protocol", protocol, "--concurrency", "3", "--out", str(out)])
        assert cli.run(args) == 0
        for k, im in imgs.items():
            assert np.array_equal(load_label_png(out / f"{k}_mask.png"), reference.segment([im])[0])
            assert Image.open(out / f"{k}_overlay.jpg").size == (im.shape[1], im.shape[0])
        assert (out / "c_mask.png").is_file()
        assert Image.open(out / "overlays.png").size[0] >= 2 * 128  # thumbnails of every result
        assert "p50" in capsys.readouterr().out
        raw = tmp_path / f"raw-{protocol}"  # the full MASK tensor instead: the very same mask files
        args = p.parse_args([str(src), "--url", url, "--protocol", protocol, "--out", str(raw), "--no-overlay",
                             "--mask-transport", "raw"])
        assert cli.run(args) == 0
        for k in (*imgs, "c"):
            assert (raw / f"{k}_mask.png").read_bytes() == (out / f"{k}_mask.png").read_bytes(), k
    args = p.parse_args([str(src), "--url", f"127.0.0.1:{_free_port()}", "--out", str(out)])
    with pytest.raises(UserError, match="no Triton server"):
        cli.run(args)
    args = p.parse_args([str(src), "--url", server.grpc_url, "--model", "nope", "--out", str(out)])
    with pytest.raises(UserError, match="not loaded"):
        cli.run(args)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is an existing file"):
        cli.run(p.parse_args([str(src), "--url", server.grpc_url, "--out", str(tmp_path / "file")]))


# --------------------------------------------------------------------------------------------
# server lifecycle

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_start_errors_are_clear(tmp_path, repo) -> None:
    with pytest.raises(UserError, match="no such folder"):
        TritonServer(tmp_path / "missing").start()
    with socket.socket() as s:  # a port clash is caught before the server starts
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(UserError, match="already listens"):
            TritonServer(repo, http_port=s.getsockname()[1]).start()
    broken = tmp_path / "broken"
    (broken / "boom" / "1").mkdir(parents=True)
    (broken / "boom" / "1" / "model.py").write_text("raise RuntimeError('model import exploded')\n")
    (broken / "boom" / "config.pbtxt").write_text(
        'name: "boom"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    srv = TritonServer(broken, ready_timeout=60)
    with pytest.raises(UserError, match="model import exploded") as err:
        srv.start()
    assert "exited" in str(err.value) or "not ready" in str(err.value)
    assert "\n" not in str(err.value) and str(srv.log_path) in str(err.value)
    assert "model import exploded" in srv.log_tail()
    assert not _group_pids(srv.pid)
    srv.log_path.unlink()


def test_ganseg_serve_stops_cleanly_on_sigterm(repo) -> None:
    ports = [_free_port() for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "ganseg.cli", "serve", "--repo", str(repo),
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text = "".join(read_until(proc, lambda line: "Ctrl-C stops it" in line))
        assert "ready (pid" in text, text
        server_pid = int(text.split("ready (pid ")[1].split(")")[0])
        assert httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}").is_server_ready()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, text + rest
        assert "Triton stopped" in rest
        assert not _group_pids(server_pid), "tritonserver or a stub outlived `ganseg serve`"
        assert not os.path.exists(f"/proc/{server_pid}") or "Z" in Path(f"/proc/{server_pid}/stat").read_text().split()[2]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_default_repository_is_exported_once_into_the_cache(repo, tmp_path, monkeypatch) -> None:
    """`ganseg serve` without --repo: the bundled default UNet, exported on first use, reused after."""
    import ganseg.unet
    from ganseg.serving.server import default_repository

    weights = repo.parent / "run" / "unet.safetensors"
    monkeypatch.setattr(ganseg.unet, "DEFAULT_UNET", weights)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = default_repository()
    assert first.is_relative_to(tmp_path / "cache" / "ganseg" / "triton")
    assert (first / "ganseg_unet" / "1" / "model.onnx").is_file() and (first / "ganseg_segment" / "config.pbtxt").is_file()
    stamp = (first / "ganseg_unet" / "1" / "model.onnx").stat().st_mtime_ns
    assert default_repository() == first
    assert (first / "ganseg_unet" / "1" / "model.onnx").stat().st_mtime_ns == stamp  # not exported again
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    monkeypatch.setattr(ganseg.unet, "DEFAULT_UNET", tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="--repo"):
        default_repository()
