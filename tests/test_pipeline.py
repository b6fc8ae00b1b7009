"""ganseg.pipeline: the one photo pipeline of the server, `ganseg segment` and the benchmarks.

Without a server: the pipeline imports without torch or the stage packages (the static layering
of every room is tests/test_layering.py), the one size limit with ganseg's own message, JPEG draft decoding
(really reduced, masks agree with a full decode), the nearest label resize, fast mask PNGs.
Against the REAL Triton server (bundled default UNet, BLS pipeline): a 12 MP JPEG served equals
`ganseg segment` on the same file, OVERLAY only when requested and at the bounded preview size,
the size limit. The 12 MP JPEG is generated once per module.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from pngs import header_only_png  # noqa: E402

from ganseg import pipeline as P
from ganseg.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# helpers

def _face_photo(seed: int, size: tuple[int, int], quality: int = 90) -> tuple[bytes, np.ndarray]:
    """A rendered test face (128²) upscaled to size=(W, H) as a JPEG, and its exact labels at (H, W)."""
    from ganseg.faces import render_faces

    img, lab = render_faces([seed], resolution=128)
    big = Image.fromarray(img[0]).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), P.resize_labels(lab[0], (size[1], size[0]))


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    return _face_photo(7_000_123, (4000, 3000))[0]


# --------------------------------------------------------------------------------------------
# layering

# (the static layering of every room is tests/test_layering.py)

def test_one_photo_path() -> None:
    assert not (ROOT / "serving" / "transforms.py").exists(), "the second copy of the photo path is back"


def test_pipeline_imports_without_torch_or_stage_packages() -> None:
    """What actually gets imported (a subprocess), beside the static scan of tests/test_layering.py."""
    stage = "m.startswith(('ganseg.serving', 'ganseg.export', 'ganseg.training'))"
    code = ("import sys, ganseg.pipeline; "
            f"bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or {stage}]; assert not bad, bad[:5]; "
            "import ganseg.segment, ganseg.evaluate, ganseg.unet, ganseg.labels, ganseg.images; "
            f"bad = [m for m in sys.modules if {stage}]; assert not bad, bad[:5]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------
# the one size limit

def test_one_size_limit_from_the_header_with_our_own_message(tmp_path) -> None:
    from ganseg.cli import main
    from ganseg.images import MAX_PIXELS
    from ganseg.export.triton_repository import ServingConfig

    assert P.MAX_PIXELS == MAX_PIXELS == ServingConfig().max_pixels == 64_000_000
    ok, big, huge = header_only_png(8000, 8000), header_only_png(8001, 8000), header_only_png(12_000, 10_000)  # 120 MP > Pillow's 89 MP
    assert P.check_photo(ok) == (8000, 8000)  # header only: the 64 MP of pixels are never decoded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not Pillow's DecompressionBombWarning
        for data, px in ((big, "64,008,000"), (huge, "120,000,000")):
            with pytest.raises(UserError, match=r"photo\.png: image is \d+x8000|photo\.png: image is 12000x10000") as err:
                P.check_photo(data, "photo.png")
            assert f"= {px} pixels, above the limit of 64,000,000 pixels (64 MP); downscale it first" in str(err.value)
            with pytest.raises(UserError, match=r"above the limit of 64,000,000 pixels \(64 MP\)"):
                P.pre([data], 64, names=["photo.png"])
    (tmp_path / "big.png").write_bytes(big)
    assert main(["segment", str(tmp_path / "big.png"), "--out", str(tmp_path / "seg")]) == 2
    assert not (tmp_path / "seg" / "big_mask.png").exists()
    with pytest.raises(UserError, match="above the limit"):
        P.pre([np.zeros((8001, 8000, 3), np.uint8)], 64)  # raw pixels: the same limit


# --------------------------------------------------------------------------------------------
# decode at the size the network needs

def test_jpeg_draft_decode_is_reduced_and_masks_agree(tmp_path) -> None:
    from ganseg.images import decode_rgb, open_photo

    data, _ = _face_photo(7_000_001, (1600, 1200))
    with open_photo(data, "x", draft=2 * 64) as photo:
        assert photo.size == (1600, 1200) and photo.rgb().shape == (150, 200, 3)  # 1/8 DCT scale
    with open_photo(data, "x", draft=2 * 512) as photo:
        assert photo.rgb().shape == (1200, 1600, 3)  # not reduced below 2x the input
    seg = P.OnnxSegmenter(_bundled_onnx(tmp_path))
    draft = seg.segment([data])[0]  # bytes: decoded by the pipeline (draft)
    full = seg.segment([decode_rgb(data)])[0]  # pixels of a full decode
    assert draft.shape == full.shape == (1200, 1600)
    assert (draft == full).mean() >= 0.97, f"draft vs full decode: {(draft == full).mean():.4f} of pixels agree"
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, format="PNG")
    assert np.array_equal(seg.segment([png.getvalue()])[0], full)  # non-JPEG: full decode, same pixels


def _bundled_onnx(tmp_path: Path) -> Path:
    from ganseg.export.onnx_export import export_unet

    return export_unet(None, tmp_path / "unet.onnx")


# --------------------------------------------------------------------------------------------
# outputs

def test_nearest_label_resize_by_index_arithmetic() -> None:
    lab = np.random.default_rng(0).integers(0, 10, (64, 64), dtype=np.uint8)
    for hw in ((3000, 4000), (1080, 1920), (64, 64), (37, 53), (100, 30), (20, 20)):
        got = P.resize_labels(lab, hw)
        rows = ((np.arange(hw[0]) + 0.5) * 64 / hw[0]).astype(int)
        cols = ((np.arange(hw[1]) + 0.5) * 64 / hw[1]).astype(int)
        want = lab[rows][:, cols]
        assert got.shape == hw and got.dtype == np.uint8
        assert (got == want).mean() > 0.99  # float rounding at exact pixel-centre ties only
    assert np.array_equal(P.resize_labels(lab, (128, 128)), np.repeat(np.repeat(lab, 2, 0), 2, 1))


def test_mask_png_is_indexed_fast_and_exact(tmp_path) -> None:
    from ganseg.labels import PALETTE, load_label_png, save_label_png

    lab = P.resize_labels(np.random.default_rng(1).integers(0, 10, (64, 64), dtype=np.uint8), (3000, 4000))
    data = P.label_png(lab, PALETTE)
    im = Image.open(io.BytesIO(data))
    assert im.mode == "P" and np.array_equal(np.asarray(im), lab)
    assert im.getpalette()[:30] == PALETTE.reshape(-1).tolist()
    save_label_png(tmp_path / "m.png", lab)  # the same encoder behind the atomic file writer
    assert (tmp_path / "m.png").read_bytes() == data and np.array_equal(load_label_png(tmp_path / "m.png"), lab)


def test_overlay_only_when_asked_and_at_preview_size() -> None:
    data, _ = _face_photo(7_000_002, (2000, 1500))
    b = P.pre([data], 64)
    assert b.previews == [None]
    logits = np.random.default_rng(2).normal(size=(1, 10, 64, 64)).astype(np.float32)
    assert P.post(logits, b)[0].overlay is None
    bp = P.pre([data], 64, preview=P.PREVIEW_MAX_SIDE)
    assert np.array_equal(bp.pixels, b.pixels)  # the network input never depends on the overlay
    r = P.post(logits, bp, P.UNetSpec(64, ["c"] * 10, np.zeros((10, 3), np.uint8)).palette)[0]
    ov = Image.open(io.BytesIO(r.overlay))
    # drawn from the one reduced decode: 1/4 DCT scale (1/8 would leave a short side < REDUCED_MIN_SIDE)
    assert r.mask.shape == (1500, 2000) and ov.size == (500, 375) == bp.previews[0].shape[1::-1]
    assert min(ov.size) >= P.REDUCED_MIN_SIDE
    assert max(Image.open(io.BytesIO(P.post(logits, P.pre([data], 64, preview=200), np.zeros((10, 3), np.uint8))[0]
                                     .overlay)).size) <= 200


# --------------------------------------------------------------------------------------------
# against the real server: the bundled default UNet

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("tritonclient.grpc")
    from ganseg.export.triton_repository import build_repository
    from ganseg.serving.server import TritonServer

    repo = build_repository(tmp_path_factory.mktemp("pipeline") / "repo", pipeline="both")  # bundled default UNet
    with TritonServer(repo, ready_timeout=120) as srv:
        import tritonclient.grpc as grpcclient

        yield grpcclient, grpcclient.InferenceServerClient(srv.grpc_url)


def _infer(served, data: bytes, outputs=("MASK",), parameters=None, model="ganseg_segment"):
    mod, client = served
    inp = mod.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    return client.infer(model, [inp], outputs=None if outputs is None else [mod.InferRequestedOutput(o) for o in outputs],
                        parameters=parameters, client_timeout=120)


def test_served_12mp_jpeg_equals_ganseg_segment(served, photo_12mp, tmp_path) -> None:
    from ganseg.cli import main
    from ganseg.labels import load_label_png

    (tmp_path / "photo.jpg").write_bytes(photo_12mp)
    assert main(["segment", str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "seg")]) == 0
    want = load_label_png(tmp_path / "seg" / "photo_mask.png")
    assert want.shape == (3000, 4000)
    assert Image.open(tmp_path / "seg" / "photo_overlay.jpg").size == (500, 375)  # from the 1/8-scale decode
    r = _infer(served, photo_12mp)
    mask = r.as_numpy("MASK")
    assert mask.shape == (1, 3000, 4000) and mask.dtype == np.uint8
    agree = float((mask[0] == want).mean())
    assert agree >= 0.999, f"served vs `ganseg segment`: {agree:.5f} of pixels agree"
    assert len(np.unique(want)) > 3  # a face, not a blank map
    # the compact transport: 4 KB of labels + the size; expanded with the pipeline's rule it is MASK, byte for byte
    for model in ("ganseg_segment", "ganseg_segment_ensemble"):
        c = _infer(served, photo_12mp, outputs=("MASK_LOWRES", "MASK_SIZE"), model=model)
        low, size = c.as_numpy("MASK_LOWRES"), c.as_numpy("MASK_SIZE")
        assert low.shape == (1, 64, 64) and low.dtype == np.uint8 and size.tolist() == [[3000, 4000]]
        assert np.array_equal(P.resize_labels(low[0], tuple(size[0])), mask[0]), model
        if model == "ganseg_segment":  # BLS makes only what was asked for
            assert c.as_numpy("MASK") is None and c.as_numpy("OVERLAY") is None


def test_served_overlay_only_when_requested(served, photo_12mp) -> None:
    r = _infer(served, photo_12mp, outputs=("MASK",))
    assert r.as_numpy("OVERLAY") is None and r.get_output("OVERLAY") is None
    r = _infer(served, photo_12mp, outputs=("MASK", "OVERLAY"))
    ov = Image.open(io.BytesIO(bytes(r.as_numpy("OVERLAY").reshape(-1)[0])))
    assert ov.size == (500, 375)  # the network's own 1/8-scale decode: no second decode, never full size
    r = _infer(served, photo_12mp, outputs=("MASK", "OVERLAY"), parameters={"overlay_max_side": 300})
    assert max(Image.open(io.BytesIO(bytes(r.as_numpy("OVERLAY").reshape(-1)[0]))).size) == 300


def test_ensemble_overlay_follows_the_request_parameter(served) -> None:
    """The ensemble's pre step cannot see the requested outputs: overlay_max_side (forwarded by Triton
    to every step) sizes or, at 0, turns off its OVERLAY; MASK is the same either way."""
    data, _ = _face_photo(7_000_003, (640, 480))
    every = _infer(served, data, outputs=None, model="ganseg_segment_ensemble", parameters={"overlay_max_side": 0})
    assert every.as_numpy("OVERLAY") is None  # all outputs asked for, none made
    small = _infer(served, data, outputs=("MASK", "OVERLAY"), model="ganseg_segment_ensemble",
                   parameters={"overlay_max_side": 100})
    assert Image.open(io.BytesIO(bytes(small.as_numpy("OVERLAY").reshape(-1)[0]))).size == (100, 75)
    assert np.array_equal(every.as_numpy("MASK"), small.as_numpy("MASK"))
    assert np.array_equal(every.as_numpy("MASK"), _infer(served, data).as_numpy("MASK"))  # BLS: the same mask


def test_served_size_limit(served) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as err:
        _infer(served, header_only_png(8001, 8000))
    assert "8001x8000 = 64,008,000 pixels, above the limit of 64,000,000 pixels (64 MP); downscale it first" in err.value.message()
    assert "\n" not in err.value.message() and json.dumps(err.value.message())
