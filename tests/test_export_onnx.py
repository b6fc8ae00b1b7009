"""ONNX export: the UNet contract, ONNX Runtime parity, TensorRT-10 operator list, labeler graphs, INT8.

Tiny random models keep this fast (the bundled default UNet is exercised when it is installed).
Parity is measured on held-out rendered faces (`split_seeds("test", ...)`), never on training data.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch

from ganseg.errors import UserError
from ganseg.export import onnx_export
from ganseg.export.onnx_export import export_unet, read_metadata, unet_parity
from ganseg.export.onnx_ops import op_types
from ganseg.faces import CLASS_NAMES, render_faces, split_seeds
from ganseg.images import from_uint8
from ganseg.unet import UNet, UNetConfig, save_unet

sys.path.insert(0, str(Path(__file__).parent))
import trt10_onnx_ops as trt10  # noqa: E402

CONTRACT_KEYS = {"ganseg.format", "ganseg.version", "input_name", "output_name", "normalization", "class_names",
                 "palette", "input_size", "size_multiple", "precision", "source_sha256", "opset"}


def _session(path):
    return onnx_export.ort_session(path)


def assert_trt10_ops(model: onnx.ModelProto, allow_custom: tuple[tuple[str, str], ...] = ()) -> None:
    """Every node is an operator TensorRT 10's ONNX parser supports (or an allowed plugin node),
    the opset is within the parser's range, and the restrictions ganseg could hit hold."""
    ops = op_types(model)
    bad = sorted(f"{d}:{o}" if d else o for d, o in ops
                 if (d, o) not in allow_custom and (d not in ("", "ai.onnx") or o not in trt10.SUPPORTED))
    assert not bad, f"operators TensorRT {trt10.TRT_VERSION} cannot parse: {bad} (list: {trt10.SOURCE})"
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert trt10.OPSET_RANGE[0] <= opset <= trt10.OPSET_RANGE[1]
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Resize":
            attrs = {a.name: (a.s.decode() if a.type == onnx.AttributeProto.STRING else a.i) for a in n.attribute}
            assert attrs.get("mode", "nearest") in ("nearest", "linear")
            assert attrs.get("coordinate_transformation_mode", "half_pixel") in (
                "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
            assert not attrs.get("antialias", 0)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
            zp = onnx.numpy_helper.to_array(inits[n.input[2]])
            assert not zp.any(), f"{n.name}: TensorRT needs zero points of 0"


# --------------------------------------------------------------------------------------------
# fixtures: one tiny UNet run folder, its exports, and held-out rendered faces

@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(num_classes=10, width=8, depth=3))
    with torch.no_grad():  # non-trivial BN statistics, so folding them into the convs is really tested
        for m in unet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        unet.head.weight.mul_(30)  # spread the logits so argmax agreement is a real test
    run = tmp_path_factory.mktemp("unet_run")
    save_unet(unet, run / "unet.safetensors", list(CLASS_NAMES), extra={"resolution": 64})
    return run


@pytest.fixture(scope="module")
def exported(unet_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {p: export_unet(unet_run, out / f"unet_{p}.onnx", p) for p in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def held_out_faces():
    images, labels = render_faces(split_seeds("test", 6), resolution=64)
    return images, labels


def _load(run):
    return onnx_export.load_unet_checked(run)[0]


# --------------------------------------------------------------------------------------------
# UNet: contract, parity, dynamic axes

def test_unet_contract_metadata_and_io(exported, unet_run):
    path = exported["fp32"]
    meta = read_metadata(path)
    assert CONTRACT_KEYS <= set(meta)
    assert meta["ganseg.format"] == "ganseg.unet.onnx/1" and meta["precision"] == "fp32"
    assert meta["input_name"] == "image" and meta["output_name"] == "logits"
    assert meta["normalization"] == {"scale": 1 / 127.5, "offset": -1.0, "layout": "NCHW", "channels": "RGB"}
    assert meta["class_names"] == list(CLASS_NAMES) and len(meta["palette"]) == 10
    assert meta["input_size"] == 64 and meta["size_multiple"] == 8 and meta["opset"] >= 17
    assert meta["source_sha256"] == onnx_export.sha256_file(unet_run / "unet.safetensors")
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    (inp,), (out,) = m.graph.input, m.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, inp.type.tensor_type.elem_type, dims(inp)) == ("image", onnx.TensorProto.FLOAT,
                                                                     ["N", 3, "H", "W"])
    assert (out.name, out.type.tensor_type.elem_type, dims(out)) == ("logits", onnx.TensorProto.FLOAT,
                                                                      ["N", 10, "H", "W"])


def test_unet_fp32_parity_on_rendered_test_faces(exported, unet_run, held_out_faces):
    r = unet_parity(exported["fp32"], _load(unet_run), held_out_faces[0])
    assert r["max_abs_err"] <= 1e-4, r
    assert r["argmax_agreement"] >= 0.9999, r
    assert r["logit_range"] > 1.0  # the check compares real, spread-out logits


@pytest.mark.parametrize("n,h,w", [(1, 64, 64), (5, 64, 64), (2, 48, 80), (1, 128, 96)])
def test_unet_dynamic_batch_and_size(exported, unet_run, n, h, w):
    from ganseg.images import resize_rgb

    faces, _ = render_faces(split_seeds("test", n), resolution=max(h, w))
    images = np.stack([resize_rgb(f, max(h, w))[:h, :w] for f in faces])
    got = _session(exported["fp32"]).run(["logits"], {"image": from_uint8(images).numpy()})[0]
    with torch.no_grad():
        ref = _load(unet_run)(from_uint8(images)).numpy()
    assert got.shape == (n, 10, h, w)
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9999


def test_unet_fp16_keeps_float32_io_and_is_close(exported, unet_run, held_out_faces):
    path = exported["fp16"]
    m = onnx.load(str(path))
    assert read_metadata(path)["precision"] == "fp16"
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_w = [i for i in m.graph.initializer if i.dims and len(i.dims) == 4]
    assert conv_w and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w)
    assert path.stat().st_size < 0.6 * exported["fp32"].stat().st_size
    r = unet_parity(path, _load(unet_run), held_out_faces[0])
    # half precision: ~3 significant digits on logits of magnitude r["logit_range"]
    assert r["max_abs_err"] <= 2e-3 * max(1.0, r["logit_range"]), r
    assert r["argmax_agreement"] >= 0.999, r


def test_unet_graphs_use_only_tensorrt10_ops(exported):
    for path in exported.values():
        assert_trt10_ops(onnx.load(str(path)))


def test_export_from_module_and_metadata_roundtrip(tmp_path, unet_run):
    unet = _load(unet_run)
    out = export_unet(unet, tmp_path / "sub" / "m.onnx")  # missing folders are created
    meta = read_metadata(out)
    from ganseg.tagged import state_sha256  # synthesize's dataset manifests record the same identity

    assert meta["source_sha256"] == state_sha256(unet)
    assert meta["input_size"] == 64
    assert not list(tmp_path.glob("sub/.*tmp"))  # atomic write leaves no temp file


# --------------------------------------------------------------------------------------------
# errors: named file + fix, raised before any work, nothing lost

def test_errors_missing_corrupt_and_unwritable(tmp_path, unet_run):
    with pytest.raises(UserError, match="no such file or folder"):
        export_unet(tmp_path / "nope", tmp_path / "a.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no unet.safetensors"):
        export_unet(tmp_path / "empty", tmp_path / "a.onnx")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="bad.safetensors"):
        export_unet(bad, tmp_path / "a.onnx")
    with pytest.raises(UserError, match="existing folder, but a file is expected"):
        export_unet(unet_run, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        export_unet(unet_run, tmp_path / "file" / "a.onnx")
    with pytest.raises(UserError, match="precision"):
        export_unet(unet_run, tmp_path / "a.onnx", "bf8")
    assert not (tmp_path / "a.onnx").exists()
    # an existing output is replaced only by a complete, checked file
    keep = tmp_path / "keep.onnx"
    keep.write_bytes(b"old")
    with pytest.raises(UserError):
        export_unet(bad, keep)
    assert keep.read_bytes() == b"old"


def test_read_metadata_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_metadata(tmp_path / "x.onnx")
    (tmp_path / "x.onnx").write_bytes(b"\xff\xfe not protobuf" * 3)
    with pytest.raises(UserError, match="x.onnx"):
        read_metadata(tmp_path / "x.onnx")


def _cli(argv: list[str]) -> int:
    from ganseg.export import cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p, argv)
    return cli.run(p.parse_args(argv))


def test_cli_unet_export(tmp_path, unet_run, capsys):
    out = tmp_path / "cli.onnx"
    assert _cli(["onnx", "--unet", str(unet_run), "--out", str(out), "--precision", "fp16"]) == 0
    assert read_metadata(out)["precision"] == "fp16"
    text = capsys.readouterr().out
    assert "argmax agreement" in text and str(out) in text
    with pytest.raises(UserError, match="--labeler"):
        _cli(["onnx", "--unet", str(unet_run), "--head", "h.safetensors", "--out", str(out)])
    q8 = tmp_path / "int8.onnx"
    with pytest.raises(UserError, match="--calib DIR"):  # a user's UNet: calibrate on the user's photos
        _cli(["onnx", "--unet", str(unet_run), "--int8", "--out", str(q8)])
    assert not q8.exists()
    photos = _train_face_folder(tmp_path / "photos", 8)
    with pytest.raises(UserError, match="--calib only applies with --int8"):
        _cli(["onnx", "--unet", str(unet_run), "--calib", str(photos), "--out", str(q8)])
    assert _cli(["onnx", "--unet", str(unet_run), "--int8", "--calib", str(photos), "--calib-images", "6",
                 "--out", str(q8)]) == 0
    meta = read_metadata(q8)
    assert meta["precision"] == "int8" and f"6 photos from {photos}" in meta["quantization"]["calibration"]


def test_cli_default_unet(tmp_path):
    from ganseg.unet import DEFAULT_UNET

    out = tmp_path / "default.onnx"
    if not DEFAULT_UNET.is_file():
        with pytest.raises(UserError, match="bundled default UNet"):
            _cli(["onnx", "--unet", "--out", str(out), "--no-verify"])
        pytest.skip(f"bundled default UNet not installed ({DEFAULT_UNET}); its error message was checked")
    assert _cli(["onnx", "--unet", "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["source_sha256"] == onnx_export.sha256_file(DEFAULT_UNET)
    unet = onnx_export.load_unet_checked(None)[0]
    images, _ = render_faces(split_seeds("test", 4), resolution=meta["input_size"])
    r = unet_parity(out, unet, images)
    assert r["max_abs_err"] <= 1e-4 and r["argmax_agreement"] >= 0.9999, r


# --------------------------------------------------------------------------------------------
# labeler: generator + head as one graph (tiny generator; its slow dynamo export is done once per
# process and reused for every head, see labeler.cached_generator_front)

from ganseg.export import labeler as L  # noqa: E402

G_CHANNELS = [24, 12, 6]  # feature widths 24, 12, 12, 6, 6: sum 60, a width no other tensor has
PSI = 0.8  # one truncation everywhere, so the cached generator graph serves every test


@pytest.fixture(scope="module")
def tiny_g():
    from ganseg.stylegan2 import Generator, GeneratorConfig

    torch.manual_seed(1)
    G = Generator(GeneratorConfig(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channels=G_CHANNELS))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "noise_strength" in name or name.endswith(".bias"):
                p.uniform_(-0.3, 0.3)  # non-zero noise and biases: the const-noise path is exported too
        G.mapping.w_avg.normal_()
    return G.eval().requires_grad_(False)


def _head(G, kind, size=None, seed=0, **kw):
    from ganseg.heads import head_for

    torch.manual_seed(seed)
    h = head_for(G, kind, 5, size=size, **kw)
    with torch.no_grad():
        h.project.bias.normal_()
        h.project.scales.uniform_(0.5, 2.0)
        h.project.weight.mul_(4)  # confident, spread-out logits
    return h.eval()


@pytest.fixture(scope="module")
def latents():
    from ganseg.latents import z_from_seeds

    return z_from_seeds(list(range(100, 106)), 32).numpy()


def _dims(model, name):
    inferred = onnx.shape_inference.infer_shapes(model)
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        if v.name == name:
            return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    raise KeyError(name)


LABELER_CASES = {  # kind, head size (16 = generator's), extra head config
    "linear": ("linear", 16, {}),
    "cnn_up32": ("cnn", 32, {}),                              # every map bilinear up, image resized too
    "mlp_down8": ("mlp", 8, {"mlp_hidden": [20, 10]}),        # area down 16 -> 8 (AveragePool), identity at 8
    "linear_from8": ("linear", 16, {"min_resolution": 8}),    # a head reading only some layers
}


@pytest.mark.parametrize("case", list(LABELER_CASES))
def test_labeler_parity_and_structure(case, tiny_g, latents, tmp_path):
    kind, size, kw = LABELER_CASES[case]
    head = _head(tiny_g, kind, size, **kw)
    out = L.export_labeler(tiny_g, head, tmp_path / f"{case}.onnx", truncation=PSI)
    meta = read_metadata(out)
    assert meta["ganseg.format"] == "ganseg.labeler.onnx/1" and meta["resolution"] == size
    assert meta["truncation"] == PSI and not meta["plugin"]
    model = onnx.load(str(out))
    r = L.labeler_parity(model, tiny_g, head, latents, truncation=PSI)
    assert r["image_max_abs_err"] <= 1e-4, r
    assert r["labels_agreement"] >= 0.999, r
    assert r["confidence_max_abs_err"] <= 1e-4, r
    assert r["shape"] == [len(latents), 3, size, size] and r["labels_dtype"] == "uint8"
    # the fused first layer is per-resolution projections + Resize/AveragePool + Add: no tensor ever
    # holds the channel stack (sum of the feature widths), and nothing is concatenated along channels
    inferred = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    stack = sum(c for _, _, c in tiny_g.feature_info)
    widths = {tuple(d.dim_value for d in v.type.tensor_type.shape.dim)[1:2]
              for v in inferred.graph.value_info if len(v.type.tensor_type.shape.dim) == 4}
    assert (stack,) not in widths
    inits = {t.name for t in model.graph.initializer}  # weights folded: TensorRT sees constant conv weights
    assert all(n.input[1] in inits for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose"))
    calls = [n for n in model.graph.node if n.domain == L.FUSED_DOMAIN]  # one node per fused block
    assert len(calls) == 1 and {a.name for a in calls[0].attribute} == set(L.FUSED_ATTRS)
    ops = [n.op_type for f in model.functions if f.domain == L.FUSED_DOMAIN for n in f.node]
    up = 1 if size > 4 else 0
    assert ops.count("Resize") >= up and ("AveragePool" in ops) == (size < 16)
    assert_trt10_ops(model)


def test_labeler_dynamic_batch_int64_labels(tiny_g, latents, tmp_path):
    head = _head(tiny_g, "cnn", 16)
    out = L.export_labeler(tiny_g, head, tmp_path / "l.onnx", labels_dtype="int64", truncation=PSI)
    sess = onnx_export.ort_session(out)
    for n in (1, 5):
        img, lab, conf = sess.run(None, {"z": latents[:n]})
        assert img.shape == (n, 3, 16, 16) and lab.shape == conf.shape == (n, 16, 16)
        assert lab.dtype == np.int64 and conf.dtype == np.float32
        assert ((conf > 0.2 - 1e-6) & (conf <= 1 + 1e-6)).all()  # max of 5 probabilities


def test_labeler_ensemble(tiny_g, latents, tmp_path):
    from ganseg.heads import HeadEnsemble

    ens = HeadEnsemble([_head(tiny_g, "linear", 16, seed=s) for s in (1, 2)]).eval()
    out = L.export_labeler(tiny_g, ens, tmp_path / "ens.onnx", truncation=PSI)
    r = L.labeler_parity(out, tiny_g, ens, latents, truncation=PSI)
    assert r["image_max_abs_err"] <= 1e-4 and r["labels_agreement"] >= 0.999, r
    plug = L.to_plugin(onnx.load(str(out)))
    assert sum(n.op_type == L.PLUGIN_OP for n in plug.graph.node) == 2


def test_plugin_node_spec_and_roundtrip(tiny_g, latents, tmp_path):
    head = _head(tiny_g, "cnn", 16)
    std = onnx.load(str(L.export_labeler(tiny_g, head, tmp_path / "std.onnx", truncation=PSI)))
    path = L.export_labeler(tiny_g, head, tmp_path / "plugin.onnx", plugin=True, truncation=PSI)
    plug = onnx.load(str(path))
    assert read_metadata(plug)["plugin"] is True
    nodes = [n for n in plug.graph.node if n.op_type == "GansegResampleAccumulate"]
    assert len(nodes) == 1
    (node,) = nodes
    assert node.domain == "ganseg" and ("ganseg", 1) in {(o.domain, o.version) for o in plug.opset_import}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": b"1", "plugin_namespace": b"ganseg", "size": 16, "align_corners": 0,
                     "activation": b"lrelu"}
    # inputs: per-resolution projected maps [N, K, r, r] in increasing r, then bias [K]
    *maps, bias = node.input
    res = [_dims(plug, m)[-1] for m in maps]
    assert res == sorted(res) == [4, 8, 16] and all(_dims(plug, m)[1] == 128 for m in maps)
    assert [tuple(i.dims) for i in plug.graph.initializer if i.name == bias] == [(128,)]
    assert not [n for n in plug.graph.node if n.domain == L.FUSED_DOMAIN]
    assert not [f for f in plug.functions if f.domain == L.FUSED_DOMAIN]
    assert_trt10_ops(plug, allow_custom=(("ganseg", "GansegResampleAccumulate"),))
    # surgery both ways: plugin -> standard runs in ONNX Runtime with the same outputs as the standard export
    back = L.to_standard(plug)
    onnx.checker.check_model(back, full_check=True)
    assert "ganseg" not in {o.domain for o in back.opset_import}
    a = onnx_export.ort_session(back.SerializeToString()).run(None, {"z": latents})
    b = onnx_export.ort_session(std.SerializeToString()).run(None, {"z": latents})
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    again = L.to_plugin(std)
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in plug.graph.node]
    anonymous = onnx.ModelProto()  # node names and doc strings carry nothing the surgery needs
    anonymous.CopyFrom(std)
    for n in anonymous.graph.node:
        n.name, n.doc_string = "", ""
    assert [n.op_type for n in L.to_plugin(anonymous).graph.node] == [n.op_type for n in plug.graph.node]
    assert _dims(again, "head0/fused") == _dims(plug, "head0/fused") == ["N", 128, 16, 16]
    r = L.labeler_parity(plug, tiny_g, head, latents, truncation=PSI)  # (replaces the plugin node by standard ops)
    assert r["image_max_abs_err"] <= 1e-4 and r["labels_agreement"] >= 0.999, r


@pytest.mark.parametrize("r,size", [(4, 16), (8, 16), (16, 4), (16, 8), (16, 16), (5, 16), (6, 16)])
def test_resize_nodes_match_ganseg_ops_resize(r, size):
    from ganseg.ops import resize

    x = torch.randn(2, 3, r, r)
    nodes, inits = L.resize_nodes("x", r, size, "y", "t")
    vi = onnx.helper.make_tensor_value_info
    g = onnx.helper.make_graph(nodes, "t", [vi("x", onnx.TensorProto.FLOAT, [2, 3, r, r])],
                               [vi("y", onnx.TensorProto.FLOAT, [2, 3, size, size])], initializer=inits)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.checker.check_model(m, full_check=True)
    got = onnx_export.ort_session(m.SerializeToString()).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, resize(x, size).numpy(), atol=2e-6, rtol=0)


def test_resize_nodes_refuse_non_integral_area():
    with pytest.raises(UserError, match="integral"):
        L.resize_nodes("x", 16, 6, "y", "t")


def test_labeler_errors(tiny_g, tmp_path):
    from ganseg.checkpoints import save_generator
    from ganseg.heads import save_head
    from ganseg.stylegan2 import Generator, GeneratorConfig

    gfile = tmp_path / "g.safetensors"
    save_generator(tiny_g, gfile)
    other = Generator(GeneratorConfig(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channels=[16, 16, 8]))
    save_head(_head(other, "linear"), tmp_path / "other_head.safetensors")
    with pytest.raises(UserError, match="another generator"):
        L.load_inputs(str(gfile), str(tmp_path / "other_head.safetensors"))
    with pytest.raises(UserError, match="another generator"):
        L.build_labeler(tiny_g, _head(other, "linear"))
    with pytest.raises(UserError, match="no such file"):
        L.load_inputs(str(gfile), str(tmp_path / "missing.safetensors"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"garbage" * 20)
    with pytest.raises(UserError, match="corrupt.safetensors"):
        L.load_inputs(str(gfile), str(tmp_path / "corrupt.safetensors"))
    save_head(_head(tiny_g, "linear"), tmp_path / "head.safetensors")
    with pytest.raises(UserError, match="nope.safetensors"):
        L.load_inputs(str(tmp_path / "nope.safetensors"), str(tmp_path / "head.safetensors"))
    with pytest.raises(UserError, match="--head"):
        _cli(["onnx", "--labeler", "--ckpt", str(gfile), "--out", str(tmp_path / "x.onnx")])
    with pytest.raises(UserError, match="existing folder, but a file is expected"):
        _cli(["onnx", "--labeler", "--ckpt", str(gfile), "--head", str(tmp_path / "head.safetensors"),
              "--out", str(tmp_path)])


def test_cli_labeler_plugin(tiny_g, tmp_path, capsys):
    from ganseg.checkpoints import save_generator
    from ganseg.heads import save_head

    save_generator(tiny_g, tmp_path / "g.safetensors")
    save_head(_head(tiny_g, "mlp", mlp_hidden=[20, 10]), tmp_path / "head.safetensors")
    out = tmp_path / "lab.onnx"
    assert _cli(["onnx", "--labeler", "--ckpt", str(tmp_path / "g.safetensors"), "--head",
                 str(tmp_path / "head.safetensors"), "--out", str(out), "--plugin", "--truncation", str(PSI)]) == 0
    meta = read_metadata(out)
    assert meta["plugin"] is True and meta["generator_sha256"] == onnx_export.sha256_file(tmp_path / "g.safetensors")
    assert "labels agree 100.000 %" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# INT8 (QDQ) UNet

def _train_face_folder(folder: Path, n: int, resolution: int = 64) -> Path:
    """Rendered train-split faces saved as photos (never the test split the checks use)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(render_faces(split_seeds("train", n), resolution=resolution)[0]):
        Image.fromarray(im).save(folder / f"face{i:03d}.png")
    return folder


def _input_scale(model: onnx.ModelProto) -> float:
    """The calibrated scale of the QuantizeLinear that reads the graph input `image`."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image")
    return float(inits[q.input[1]])


def test_int8_calibration_reads_the_users_photos(unet_run, tmp_path):
    """Calibrating on dim grey photos gives the input the range of those photos (max |x| / 127,
    symmetric int8), not the range of rendered faces: the user's photos are what was measured."""
    from PIL import Image

    from ganseg.export.quantize import quantize_unet

    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(4):  # different sizes and formats: prepared by the serving pipeline
        Image.fromarray(np.full((40 + 30 * i, 50 + 10 * i, 3), 160 + i, np.uint8)).save(
            grey / f"g{i}.{'jpg' if i % 2 else 'png'}", quality=100)
    out = quantize_unet(unet_run, tmp_path / "grey.onnx", calib=grey, calib_images=4)
    x_max = (163 / 127.5 - 1)
    assert _input_scale(onnx.load(str(out))) == pytest.approx(x_max / 127, rel=0.03)
    assert "4 photos from" in read_metadata(out)["quantization"]["calibration"]
    with pytest.raises(UserError, match="no image files"):
        quantize_unet(unet_run, tmp_path / "x.onnx", calib=tmp_path)  # a folder of no photos: refused first
    assert not (tmp_path / "x.onnx").exists()


def test_int8_qdq_unet(unet_run, exported, held_out_faces, tmp_path):
    from ganseg.export.quantize import quantize_unet

    out = quantize_unet(unet_run, tmp_path / "int8.onnx", calib=_train_face_folder(tmp_path / "calib", 8))
    meta = read_metadata(out)
    assert CONTRACT_KEYS <= set(meta) and meta["precision"] == "int8"
    assert meta["quantization"]["format"] == "QDQ"
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    convs = ops.count("Conv")
    assert ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") >= 2 * convs
    # weights are stored as int8 (per output channel), so the file is far smaller
    int8_w = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_w) == convs
    assert out.stat().st_size < 0.45 * exported["fp32"].stat().st_size
    assert_trt10_ops(m)  # incl. zero points of 0, which TensorRT requires
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    images = held_out_faces[0]
    x = from_uint8(images).numpy()
    got = _session(out).run(None, {"image": x})[0]
    ref = _session(exported["fp32"]).run(None, {"image": x})[0]
    assert got.shape == ref.shape
    err = np.abs(got - ref).mean() / np.abs(ref).max()
    assert err < 0.03, err  # int8: on average about one per cent of the logit range
    # (the max error is larger: test pixels whose activations exceed the calibrated range are clipped)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    # ONNX Runtime's fused int8 kernels compute what the QDQ graph means (no int16 saturation: the
    # weights use 7 bits); the unfused graph (optimizations off) is that meaning
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.percentile(np.abs(got - plain), 99.9) <= 0.02 * np.abs(ref).max()
