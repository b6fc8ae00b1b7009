"""The "labeler" graph: generator + few-shot head as one ONNX model (what `ganseg synthesize` computes).

    z float32 [N, z_dim]  ->  image float32 [N, 3, S, S]   raw generator output (about [-1, 1]);
                              labels uint8|int64 [N, S, S]  argmax of the head's class probabilities;
                              confidence float32 [N, S, S]  max class probability (ensembles: of the mean)

Why it is assembled from three pieces instead of one `torch.onnx.export` call:

1. generator  z -> image, per-layer features: torch's dynamo exporter (the legacy one fails on the
   blur convolution). It is the slow part of an export (tens of seconds) and depends only on G, so
   it can be reused for several heads.
2. the head's first layer, written by hand in standard ONNX ops, *never* as the channel stack:
   a 1x1 Conv per feature layer (weight = the head's column block, with its per-layer feature scale
   folded in), summed per resolution at that resolution -> Resize (bilinear, half_pixel = PyTorch
   align_corners=False) when smaller than S, AveragePool (kernel = stride = r/S, exactly
   adaptive_avg_pool2d for integral factors) when larger -> Add -> + bias -> the head's activation.
   This is `ganseg.ops.resample_accumulate` step for step. Writing it by hand makes the block's
   boundaries known, which is what the graph surgery below needs.
3. the rest of the head (its convs), softmax, ensemble mean, argmax, max: the TorchScript exporter
   (fast, clean for these ops).

`--plugin` replaces each block of step 2 by ONE node for the TensorRT plugin of `export/plugin/`:

    op_type "GansegResampleAccumulate", domain "ganseg"; attributes plugin_version="1",
    plugin_namespace="ganseg", size (int), align_corners (int, 0), activation ("none"|"relu"|"lrelu",
    lrelu = LeakyReLU(0.2) as in ganseg.heads); inputs: the per-resolution projected maps
    [N, K, r, r] in increasing r, then bias [K]; output [N, K, size, size].

In the standard form each block is one node too: a call of an ONNX model-local function (domain
"ganseg.fused", one function per block, its body the standard ops above; ONNX Runtime and TensorRT's
parser expand local functions), with the plugin's attributes on the call. So `to_plugin` /
`to_standard` are node-for-node swaps made with `onnx.helper` (same inputs, outputs, attributes),
never a search by node names or descriptions stored in doc strings, and a plugin file can always
be checked by turning it back into a graph ONNX Runtime runs.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ganseg.errors import UserError
from ganseg.export.onnx_ops import check_model, fold_constants, save_model, set_metadata, sha256_file
from ganseg.labels import palette_for
from ganseg.paths import check_out_file

LABELER_FORMAT = "ganseg.labeler.onnx/1"
PLUGIN_OP = "GansegResampleAccumulate"
PLUGIN_DOMAIN = "ganseg"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "ganseg"
ACTIVATIONS = ("none", "relu", "lrelu")
LRELU_SLOPE = 0.2
DEFAULT_OPSET = 18
BLOCK_PREFIX = "ganseg_fused"      # node names inside a fused block's function body (cosmetic: never parsed)
FUSED_DOMAIN = "ganseg.fused"      # the standard form: each fused block is ONE call of a model-local
FUSED_OP = "ResampleAccumulate"    # function (domain FUSED_DOMAIN, op FUSED_OP<k>) whose body is standard ops
FUSED_ATTRS = ("size", "align_corners", "activation")  # the call's attributes = the plugin node's


# --------------------------------------------------------------------------------------------
# Heads: the parts of a head the graph needs

def head_list(head) -> list:
    from ganseg.heads import HeadEnsemble

    return list(head.heads) if isinstance(head, HeadEnsemble) else [head]


def head_activation(h) -> tuple[str, nn.Module]:
    """(activation right after the fused first layer, the rest of the head's body)."""
    body = h.body
    if len(body) and isinstance(body[0], nn.LeakyReLU):
        if abs(body[0].negative_slope - LRELU_SLOPE) > 1e-12:
            raise UserError(f"head activation LeakyReLU({body[0].negative_slope}) is not the fused kernel's "
                            f"LeakyReLU({LRELU_SLOPE}); export without --plugin")
        return "lrelu", nn.Sequential(*list(body)[1:])
    if len(body) and isinstance(body[0], nn.ReLU):
        return "relu", nn.Sequential(*list(body)[1:])
    return "none", body


def projection_blocks(h, feature_info: Sequence[tuple[str, int, int]]) -> list[tuple[int, int, np.ndarray]]:
    """[(generator layer index, resolution, W_l [K, C_l])] of a head's fused first layer.

    W_l is the head's weight with its per-layer feature scale folded in, exactly as
    `ganseg.heads.FusedProjection.forward` computes it.
    """
    from ganseg.ops import split_weight

    p = h.project
    with torch.no_grad():
        weight = (p.weight * p.scales.repeat_interleave(p.channels)[None]).float()
        blocks = split_weight(weight, list(h.cfg.feature_channels))
    return [(i, feature_info[i][1], w.numpy().copy()) for i, w in zip(h.cfg.feature_layers, blocks)]


# --------------------------------------------------------------------------------------------
# ONNX building blocks (standard ops)

def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def resize_nodes(x: str, r: int, size: int, out: str, prefix: str,
                 align_corners: bool = False) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`ganseg.ops.resize` of an [N, C, r, r] tensor to size x size in standard ops.

    Up (r < size): Resize linear, half_pixel (= bilinear align_corners=False; align_corners mode for
    True); scales are exact for integral factors, else the target sizes are built from Shape.
    Down (r > size): AveragePool with kernel = stride = r / size (= adaptive_avg_pool2d when the factor
    is integral; other factors have no standard ONNX op and are refused).
    """
    if r == size:
        return [helper.make_node("Identity", [x], [out], name=f"{prefix}/identity_r{r}")], []
    if r > size:
        if r % size:
            raise UserError(f"area resize {r} -> {size} is not an integral factor; ONNX has no adaptive "
                            f"average pooling: train the head at a size that divides {r}")
        f = r // size
        return [helper.make_node("AveragePool", [x], [out], name=f"{prefix}/area_r{r}", kernel_shape=[f, f],
                                 strides=[f, f])], []
    mode = "align_corners" if align_corners else "half_pixel"
    if size % r == 0:
        scales = _const(f"{prefix}/scales_r{r}", np.array([1, 1, size / r, size / r], np.float32))
        return [helper.make_node("Resize", [x, "", scales.name], [out], name=f"{prefix}/bilinear_r{r}",
                                 mode="linear", coordinate_transformation_mode=mode)], [scales]
    hw = _const(f"{prefix}/hw_r{r}", np.array([size, size], np.int64))
    nodes = [helper.make_node("Shape", [x], [f"{prefix}/shape_r{r}"], name=f"{prefix}/shape_r{r}", start=0, end=2),
             helper.make_node("Concat", [f"{prefix}/shape_r{r}", hw.name], [f"{prefix}/sizes_r{r}"],
                              name=f"{prefix}/sizes_r{r}", axis=0),
             helper.make_node("Resize", [x, "", "", f"{prefix}/sizes_r{r}"], [out], name=f"{prefix}/bilinear_r{r}",
                              mode="linear", coordinate_transformation_mode=mode)]
    return nodes, [hw]


def fused_block_nodes(maps: Sequence[tuple[str, int]], bias: str, out: str, size: int, activation: str,
                      align_corners: bool, block: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Σ_r resize(P_r, size) + bias, then the activation, in standard ops (one tagged block).

    maps: (tensor name, r) of the per-resolution projected maps [N, K, r, r]; bias: name of a [K] tensor.
    """
    if activation not in ACTIVATIONS:
        raise UserError(f"activation {activation!r}: the fused step supports {', '.join(ACTIVATIONS)}")
    prefix = f"{BLOCK_PREFIX}{block}"
    maps = sorted(maps, key=lambda m: m[1])
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    acc = None
    for name, r in maps:
        y = f"{prefix}/resized_r{r}"
        n, i = resize_nodes(name, r, size, y, prefix, align_corners)
        nodes += n
        inits += i
        if acc is None:
            acc = y
        else:
            s = f"{prefix}/sum_r{r}"
            nodes.append(helper.make_node("Add", [acc, y], [s], name=f"{prefix}/add_r{r}"))
            acc = s
    axes = _const(f"{prefix}/bias_axes", np.array([1, 2], np.int64))
    inits.append(axes)
    nodes.append(helper.make_node("Unsqueeze", [bias, axes.name], [f"{prefix}/bias_k11"], name=f"{prefix}/bias_k11"))
    pre = out if activation == "none" else f"{prefix}/pre_activation"
    nodes.append(helper.make_node("Add", [acc, f"{prefix}/bias_k11"], [pre], name=f"{prefix}/add_bias"))
    if activation == "lrelu":
        nodes.append(helper.make_node("LeakyRelu", [pre], [out], name=f"{prefix}/lrelu", alpha=LRELU_SLOPE))
    elif activation == "relu":
        nodes.append(helper.make_node("Relu", [pre], [out], name=f"{prefix}/relu"))
    return nodes, inits


def fused_block(maps: Sequence[tuple[str, int]], bias: str, out: str, size: int, activation: str,
                align_corners: bool, block: int, opset: int = DEFAULT_OPSET) -> tuple[onnx.NodeProto, onnx.FunctionProto]:
    """The standard form of one block: (the call node for the graph, the local function to add to
    `model.functions`). The body is `fused_block_nodes` with its constants as Constant nodes
    (a function has no initializers); the call carries the plugin node's attributes."""
    maps = sorted(maps, key=lambda m: m[1])
    nodes, inits = fused_block_nodes(maps, bias, out, size, activation, align_corners, block)
    consts = [helper.make_node("Constant", [], [t.name], name=t.name, value=t) for t in inits]
    inputs = [m for m, _ in maps] + [bias]
    fn = helper.make_function(FUSED_DOMAIN, f"{FUSED_OP}{block}", inputs, [out], consts + nodes,
                              [helper.make_opsetid("", opset)], attributes=list(FUSED_ATTRS))
    call = helper.make_node(fn.name, inputs, [out], name=f"{BLOCK_PREFIX}{block}", domain=FUSED_DOMAIN,
                            size=int(size), align_corners=int(align_corners), activation=activation)
    return call, fn


def plugin_node(maps: Sequence[tuple[str, int]], bias: str, out: str, size: int, activation: str,
                align_corners: bool, block: int) -> onnx.NodeProto:
    """The same step as ONE custom node for the TensorRT plugin (spec in the module docstring)."""
    if activation not in ACTIVATIONS:
        raise UserError(f"activation {activation!r}: the plugin supports {', '.join(ACTIVATIONS)}")
    maps = sorted(maps, key=lambda m: m[1])
    return helper.make_node(PLUGIN_OP, [m for m, _ in maps] + [bias], [out], name=f"{PLUGIN_OP}_{block}",
                            domain=PLUGIN_DOMAIN, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
                            size=int(size), align_corners=int(align_corners), activation=activation)


def _remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _set_domain(model: onnx.ModelProto, plugin: bool) -> None:
    """Import exactly the custom domain of the form the graph is in: ganseg (plugin) or ganseg.fused."""
    others = [o for o in model.opset_import if o.domain not in (PLUGIN_DOMAIN, FUSED_DOMAIN)]
    del model.opset_import[:]
    model.opset_import.extend(others)
    model.opset_import.add(domain=PLUGIN_DOMAIN if plugin else FUSED_DOMAIN, version=1)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: (v.decode() if isinstance(v := helper.get_attribute_value(a), bytes) else v) for a in node.attribute}


def _default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def to_plugin(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each fused-block call -> one GansegResampleAccumulate node in its place (a new model)."""
    model = copy.deepcopy(model)
    g = model.graph
    calls = [i for i, n in enumerate(g.node) if n.domain == FUSED_DOMAIN]
    if not calls:
        raise UserError("no standard fused resample-accumulate block in this graph (was it exported by "
                        "`ganseg export onnx --labeler`?)")
    widths = {t.name: t.dims[0] for t in g.initializer if len(t.dims) == 1}
    outs = {g.node[i].output[0] for i in calls}
    keep_vi = [v for v in g.value_info if v.name not in outs]
    del g.value_info[:]
    g.value_info.extend(keep_vi)
    for i in calls:
        n = g.node[i]
        a = _attrs(n)
        g.node[i].CopyFrom(helper.make_node(PLUGIN_OP, list(n.input), list(n.output), name=n.name, domain=PLUGIN_DOMAIN,
                                            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
                                            **{k: a[k] for k in FUSED_ATTRS}))
        bias = n.input[-1]
        if bias in widths:  # the plugin's output shape, for shape inference past the custom node
            g.value_info.append(helper.make_tensor_value_info(
                n.output[0], TensorProto.FLOAT, ["N", widths[bias], a["size"], a["size"]]))
    keep_fn = [f for f in model.functions if f.domain != FUSED_DOMAIN]
    del model.functions[:]
    model.functions.extend(keep_fn)
    _set_domain(model, True)
    return model


def _map_resolutions(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    res = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[3].HasField("dim_value"):
            res[v.name] = dims[3].dim_value
    return res


def to_standard(model: onnx.ModelProto) -> onnx.ModelProto:
    """GansegResampleAccumulate nodes -> fused-block calls with standard-op bodies (a new model
    ONNX Runtime can run)."""
    model = copy.deepcopy(model)
    g = model.graph
    res = _map_resolutions(model)
    opset = _default_opset(model)
    for k, n in enumerate(g.node):
        if n.op_type != PLUGIN_OP or n.domain != PLUGIN_DOMAIN:
            continue
        a = _attrs(n)
        if a.get("plugin_version") != PLUGIN_VERSION or a.get("plugin_namespace") != PLUGIN_NAMESPACE:
            raise UserError(f"node {n.name}: plugin version/namespace {a.get('plugin_version')}/"
                            f"{a.get('plugin_namespace')} unknown; this ganseg writes {PLUGIN_VERSION}/"
                            f"{PLUGIN_NAMESPACE}")
        *maps, bias = list(n.input)
        missing = [m for m in maps if m not in res]
        if missing:
            raise UserError(f"node {n.name}: cannot infer the resolution of inputs {missing}")
        call, fn = fused_block([(m, res[m]) for m in maps], bias, n.output[0], int(a["size"]), a["activation"],
                               bool(a.get("align_corners", 0)), k, opset)
        call.name = n.name
        n.CopyFrom(call)
        model.functions.append(fn)
    _set_domain(model, False)
    return model


# --------------------------------------------------------------------------------------------
# The torch pieces

class _GeneratorFront(nn.Module):
    """z -> (image, features of the used layers): `G.synthesize_features` minus its input checks
    (NaN checks are data-dependent control flow, which an exported graph cannot hold)."""

    def __init__(self, G, layers: Sequence[int], truncation: float, noise_mode: str):
        super().__init__()
        self.G, self.layers, self.truncation, self.noise_mode = G, list(layers), float(truncation), noise_mode

    def forward(self, z: torch.Tensor):
        G = self.G
        ws = G.mapping(z)[:, None].expand(-1, G.num_ws, -1)
        if self.truncation != 1.0:
            ws = G.truncate(ws, self.truncation)
        img, feats = G.synthesis(ws, self.noise_mode, True)
        return (img, *[feats[i] for i in self.layers])


class _HeadBack(nn.Module):
    """Fused first-layer outputs (activated) -> (labels, confidence), as `ganseg.heads.head_probs`."""

    def __init__(self, bodies: Sequence[nn.Module], labels_dtype: torch.dtype):
        super().__init__()
        self.bodies = nn.ModuleList(bodies)
        self.labels_dtype = labels_dtype

    def forward(self, *xs: torch.Tensor):
        if len(self.bodies) == 1:
            probs = self.bodies[0](xs[0]).float().log_softmax(dim=1).exp()
        else:
            probs = torch.stack([b(x).softmax(dim=1) for b, x in zip(self.bodies, xs)]).mean(0)
        return probs.argmax(1).to(self.labels_dtype), probs.max(1).values


def export_generator_front(G, layers: Sequence[int], truncation: float = 1.0, noise_mode: str = "const",
                           opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """The dynamo export of z -> image, feat_{i} (dynamic batch). Slow: reuse it for several heads."""
    front = _GeneratorFront(copy.deepcopy(G).float().cpu().eval(), layers, truncation, noise_mode).eval()
    z = torch.zeros(2, G.z_dim)
    names = ["image"] + [f"feat_{i}" for i in layers]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(front, (z,), None, input_names=["z"], output_names=names, opset_version=opset,
                                 dynamic_shapes={"z": {0: torch.export.Dim("N", min=1, max=4096)}},
                                 dynamo=True, optimize=True, verbose=False)
    model = fold_constants(prog.model_proto)
    del model.metadata_props[:]
    for v in model.graph.input:
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    for v in model.graph.output:
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    return model


_FRONT_CACHE: dict[tuple, bytes] = {}


def cached_generator_front(G, layers: Sequence[int], truncation: float = 1.0, noise_mode: str = "const",
                           opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """`export_generator_front`, remembered per (weights fingerprint, layers, truncation, noise, opset)
    within this process: exporting the standard and the plugin form, or several heads of one
    generator, pays for the slow generator export once."""
    from ganseg.tagged import state_sha256

    key = (state_sha256(G), tuple(layers), float(truncation), noise_mode, opset)
    if key not in _FRONT_CACHE:
        _FRONT_CACHE.clear()  # one generator at a time: these graphs can be hundreds of MB
        _FRONT_CACHE[key] = export_generator_front(G, layers, truncation, noise_mode, opset).SerializeToString()
    return onnx.load_from_string(_FRONT_CACHE[key])


def export_head_back(heads: Sequence, size: int, labels_dtype: str, opset: int) -> onnx.ModelProto:
    bodies, widths = [], []
    for h in heads:
        _, body = head_activation(h)
        bodies.append(copy.deepcopy(body).float().cpu().eval())
        widths.append(h.project.weight.shape[0])
    back = _HeadBack(bodies, torch.uint8 if labels_dtype == "uint8" else torch.int64).eval()
    xs = tuple(torch.zeros(2, w, size, size) for w in widths)
    names = [f"head{i}/fused" for i in range(len(heads))]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(back, xs, buf, input_names=names, output_names=["labels", "confidence"],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={**{n: {0: "N"} for n in names}, "labels": {0: "N"}, "confidence": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())


def _prefixed(model: onnx.ModelProto, prefix: str, keep: set[str]) -> onnx.GraphProto:
    """The graph with every tensor/node name prefixed, except names in `keep` (the joints)."""
    g = copy.deepcopy(model.graph)
    ren = lambda s: s if (not s or s in keep) else prefix + s  # noqa: E731
    for n in g.node:
        n.input[:] = [ren(s) for s in n.input]
        n.output[:] = [ren(s) for s in n.output]
        n.name = prefix + n.name
    for coll in (g.initializer, g.sparse_initializer):
        for t in coll:
            t.name = ren(t.name)
    for coll in (g.input, g.output, g.value_info):
        for v in coll:
            v.name = ren(v.name)
    return g


# --------------------------------------------------------------------------------------------
# The whole labeler

def build_labeler(G, head, *, truncation: float = 1.0, noise_mode: str = "const", labels_dtype: str = "uint8",
                  plugin: bool = False, opset: int = DEFAULT_OPSET,
                  front: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The labeler ModelProto (no metadata). `front`: a reused `export_generator_front` result whose
    outputs include every layer the head reads (same G, truncation, noise mode)."""
    from ganseg.heads import check_head_fits

    try:
        check_head_fits(G, head)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"--head: {exc}") from None
    if labels_dtype not in ("uint8", "int64"):
        raise UserError(f"--labels-dtype {labels_dtype!r}: use uint8 or int64")
    heads = head_list(head)
    size = heads[0].cfg.size
    if any(h.cfg.size != size for h in heads):
        raise UserError("the ensemble's heads label at different sizes; export one head")
    k = heads[0].cfg.num_classes
    if labels_dtype == "uint8" and k > 256:
        raise UserError(f"{k} classes do not fit uint8 labels; pass --labels-dtype int64")
    info = G.feature_info
    layers = sorted({i for h in heads for i in h.cfg.feature_layers})
    if front is None:
        # every layer: the features are computed anyway, and one export then serves any head of G
        front = cached_generator_front(G, list(range(len(info))), truncation, noise_mode, opset)
    front_outs = {o.name for o in front.graph.output}
    if not {f"feat_{i}" for i in layers} <= front_outs:
        raise ValueError("the reused generator graph lacks features this head reads")
    back = export_head_back(heads, size, labels_dtype, opset)

    joints = {"z", "image"} | {f"feat_{i}" for i in layers} | {f"head{h}/fused" for h in range(len(heads))} | \
        {"labels", "confidence"}
    gf, gb = _prefixed(front, "G/", joints), _prefixed(back, "H/", joints)
    resize_image = G.resolution != size  # a head may label at another size: images follow the labels
    if resize_image:
        for nd in gf.node:
            nd.output[:] = ["image_generated" if o == "image" else o for o in nd.output]
            nd.input[:] = ["image_generated" if i == "image" else i for i in nd.input]
    nodes = list(gf.node)
    inits = list(gf.initializer)
    functions: list[onnx.FunctionProto] = []
    for hi, h in enumerate(heads):
        act, _ = head_activation(h)
        by_res: dict[int, list[str]] = {}
        for li, r, w in projection_blocks(h, info):
            wn = f"head{hi}/proj_w{li}"
            inits.append(_const(wn, w[:, :, None, None].astype(np.float32)))
            y = f"head{hi}/proj{li}"
            nodes.append(helper.make_node("Conv", [f"feat_{li}", wn], [y], name=f"head{hi}/proj{li}",
                                          kernel_shape=[1, 1]))
            by_res.setdefault(r, []).append(y)
        maps = []
        for r in sorted(by_res):
            ys = by_res[r]
            name = f"head{hi}/projected_r{r}"
            if len(ys) == 1:
                nodes.append(helper.make_node("Identity", ys, [name], name=name))
            else:
                nodes.append(helper.make_node("Sum", ys, [name], name=name))
            maps.append((name, r))
        bias = f"head{hi}/bias"
        inits.append(_const(bias, h.project.bias.detach().float().numpy().copy()))
        out = f"head{hi}/fused"
        if plugin:
            nodes.append(plugin_node(maps, bias, out, size, act, h.cfg.align_corners, hi))
        else:
            call, fn = fused_block(maps, bias, out, size, act, h.cfg.align_corners, hi, opset)
            nodes.append(call)
            functions.append(fn)
    if resize_image:
        n, i = resize_nodes("image_generated", G.resolution, size, "image", "image_resize")
        nodes += n
        inits += i
    nodes += list(gb.node)
    inits += list(gb.initializer)
    lab_t = TensorProto.UINT8 if labels_dtype == "uint8" else TensorProto.INT64
    outputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", G.img_channels, size, size]),
               helper.make_tensor_value_info("labels", lab_t, ["N", size, size]),
               helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["N", size, size])]
    graph = helper.make_graph(nodes, "ganseg_labeler",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", G.z_dim])], outputs,
                              initializer=inits)
    if plugin:
        for hi, h in enumerate(heads):
            graph.value_info.append(helper.make_tensor_value_info(
                f"head{hi}/fused", TensorProto.FLOAT, ["N", h.project.weight.shape[0], size, size]))
    opsets = [helper.make_opsetid("", opset)] + [o for o in front.opset_import if o.domain not in ("", "ai.onnx")]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ganseg")
    model.ir_version = max(front.ir_version, back.ir_version)
    model.functions.extend(list(front.functions) + functions)
    _remove_unused_initializers(model.graph)
    _set_domain(model, plugin)
    return model


@torch.no_grad()
def torch_labels(G, head, z: torch.Tensor, truncation: float = 1.0, noise_mode: str = "const") -> dict[str, np.ndarray]:
    """The PyTorch reference (what `ganseg synthesize` computes) for parity checks."""
    from ganseg.heads import head_probs
    from ganseg.ops import resize

    if hasattr(G, "synthesize_features"):
        img, feats = G.synthesize_features(z=z, truncation_psi=truncation, noise_mode=noise_mode)
    else:
        img, feats = G.synthesize(z=z, truncation_psi=truncation, noise_mode=noise_mode, return_features=True)
    probs, _ = head_probs(head, feats)
    size = probs.shape[-1]
    if img.shape[-1] != size:
        img = resize(img.float(), size)
    return {"image": img.float().numpy(), "labels": probs.argmax(1).numpy(), "confidence": probs.max(1).values.numpy()}


def load_inputs(ckpt: str | None, head_path: str | None):
    """(G, head, generator file, head file) with UserErrors for missing/corrupt/mismatched files."""
    from ganseg.checkpoints import DEFAULT_GENERATOR, load_generator
    from ganseg.heads import check_head_fits, load_head

    if not head_path:
        raise UserError("--labeler needs --head HEAD (a head file from `ganseg train-head`)")
    hp = Path(head_path)
    if hp.is_dir():
        cands = sorted(hp.glob("*.safetensors"))
        if len(cands) != 1:
            raise UserError(f"--head {hp} is a folder; pass the head .safetensors file inside it")
        hp = cands[0]
    if not hp.is_file():
        raise UserError(f"--head {hp}: no such file; pass a head from `ganseg train-head`")
    try:
        head = load_head(hp)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--head {hp}: {str(exc).splitlines()[0]}; retrain it with `ganseg train-head`") from None
    try:
        G = load_generator(ckpt)
    except UserError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--ckpt {ckpt}: {str(exc).splitlines()[0]}") from None
    try:
        check_head_fits(G, head)
    except (UserError, ValueError) as exc:
        raise UserError(f"--head {hp} does not fit the generator --ckpt {ckpt or '(bundled default)'}: "
                        f"{exc}") from None
    gfile = Path(ckpt) if ckpt else DEFAULT_GENERATOR
    return G, head.eval(), gfile, hp


def export_labeler(G, head, out: str | os.PathLike, *, truncation: float = 1.0, noise_mode: str = "const",
                   labels_dtype: str = "uint8", plugin: bool = False, opset: int = DEFAULT_OPSET,
                   class_names: list[str] | None = None, sources: dict[str, str] | None = None,
                   front: onnx.ModelProto | None = None) -> Path:
    """Build, check and atomically write the labeler (with metadata) to `out`."""
    from ganseg import __version__
    from ganseg.heads import head_class_names
    from ganseg.tagged import state_sha256

    out = check_out_file(out)
    model = build_labeler(G, head, truncation=truncation, noise_mode=noise_mode, labels_dtype=labels_dtype,
                          plugin=plugin, opset=opset, front=front)
    heads = head_list(head)
    k = heads[0].cfg.num_classes
    names = list(class_names or head_class_names(head))
    set_metadata(model, {
        "ganseg.format": LABELER_FORMAT, "ganseg.version": __version__, "kind": "labeler",
        "input_name": "z", "output_names": ["image", "labels", "confidence"], "z_dim": G.z_dim,
        "resolution": heads[0].cfg.size, "generator_resolution": G.resolution, "truncation": truncation,
        "noise_mode": noise_mode, "labels_dtype": labels_dtype, "plugin": plugin,
        "class_names": names, "palette": palette_for(k).tolist(), "opset": opset,
        "image": "raw generator output, about [-1, 1]; uint8 = round(clamp((x + 1) * 127.5, 0, 255))",
        "confidence": "max class probability (ensemble: of the mean probabilities)",
        "z": "float32 [N, z_dim]; seed s -> numpy.random.RandomState(s).randn(z_dim)",
        "generator_sha256": (sources or {}).get("generator") or state_sha256(G),
        "head_sha256": (sources or {}).get("head") or state_sha256(head),
    })
    model.doc_string = ("ganseg labeler: z -> image, labels, confidence (generator + few-shot head)"
                        + (f"; {PLUGIN_OP} nodes need the ganseg TensorRT plugin" if plugin else ""))
    if plugin:
        onnx.checker.check_model(model, full_check=False)
        check_model(to_standard(model))  # the same graph with the standard block must pass everything
    else:
        check_model(model)
    return save_model(model, out)


def labeler_parity(path: str | os.PathLike | onnx.ModelProto, G, head, z: np.ndarray, truncation: float = 1.0,
                   noise_mode: str = "const") -> dict[str, float]:
    """ORT (CPU) vs PyTorch: max abs image error, label agreement, max abs confidence error."""
    from ganseg.pipeline import ort_session

    model = path if isinstance(path, onnx.ModelProto) else onnx.load(str(path))
    if any(n.op_type == PLUGIN_OP for n in model.graph.node):
        model = to_standard(model)
    sess = ort_session(model.SerializeToString())
    img, lab, conf = sess.run(["image", "labels", "confidence"], {"z": np.asarray(z, np.float32)})
    ref = torch_labels(G, head, torch.from_numpy(np.asarray(z, np.float32)), truncation, noise_mode)
    return {"image_max_abs_err": float(np.abs(img - ref["image"]).max()),
            "labels_agreement": float((lab.astype(np.int64) == ref["labels"]).mean()),
            "confidence_max_abs_err": float(np.abs(conf - ref["confidence"]).max()),
            "labels_dtype": str(lab.dtype), "shape": list(img.shape)}


def run_labeler_cli(args) -> int:
    from ganseg.latents import z_from_seeds

    if args.int8 or args.precision != "fp32":
        raise UserError("--labeler exports fp32 only (use TensorRT's --precision for fp16 engines)")
    out = check_out_file(args.out)
    G, head, gfile, hfile = load_inputs(args.ckpt, args.head)
    sources = {"generator": sha256_file(gfile), "head": sha256_file(hfile)}
    print(f"exporting generator ({G.resolution}px) + head to {out} (the generator export takes a while) ...")
    export_labeler(G, head, out, truncation=args.truncation, labels_dtype=args.labels_dtype, plugin=args.plugin,
                   opset=max(args.opset, DEFAULT_OPSET), sources=sources)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB{', TensorRT plugin form' if args.plugin else ''})")
    if not args.no_verify:
        z = z_from_seeds(list(range(4)), G.z_dim).numpy()
        r = labeler_parity(out, G, head, z, args.truncation)
        how = " (plugin node replaced by standard ops)" if args.plugin else ""
        print(f"ONNX Runtime vs PyTorch on 4 latents{how}: "
              f"image max |diff| {r['image_max_abs_err']:.2e}, labels agree {100 * r['labels_agreement']:.3f} %, "
              f"confidence max |diff| {r['confidence_max_abs_err']:.2e}")
    return 0


__all__ = ["build_labeler", "export_labeler", "export_generator_front", "to_plugin", "to_standard",
           "torch_labels", "labeler_parity", "fused_block_nodes", "plugin_node", "resize_nodes", "PLUGIN_OP",
           "PLUGIN_DOMAIN", "LABELER_FORMAT"]
