"""Shared ONNX helpers for every ganseg export: metadata, checks, atomic saves, output-path checks.

Why a module of its own: the UNet export, the labeler export and INT8 quantization all write ONNX
files that a server or client must be able to use with nothing else at hand. They share one
metadata convention (plain strings for names/hashes/versions, JSON for everything structured),
one definition of "a valid file" (`onnx.checker` full check + strict shape inference) and one way
of writing (serialize in memory, then `ganseg.images.write_atomic`, so a crash never leaves half a
model under the final name). The output path is checked *before* the (slow) export starts, by the
same check every ganseg command uses (`ganseg.paths.check_out_file`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx

from ganseg.errors import UserError

# Metadata values stored verbatim (strings); every other key is JSON-encoded.
PLAIN_KEYS = frozenset({"ganseg.format", "ganseg.version", "input_name", "output_name", "precision",
                        "source_sha256", "kind", "labels_dtype"})


def set_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Write `meta` into model.metadata_props (replacing keys already there)."""
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        text = value if key in PLAIN_KEYS and isinstance(value, str) else json.dumps(value)
        model.metadata_props.add(key=key, value=text)


def parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    """metadata_props strings -> values (plain keys stay strings; the rest are JSON, else left as text)."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        if key in PLAIN_KEYS:
            out[key] = text
            continue
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def load_checked(path: str | os.PathLike, what: str = "ONNX model") -> onnx.ModelProto:
    """onnx.load with a UserError (naming the file and the fix) for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (export one with `ganseg export onnx ... --out {path}`)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UserError(f"{path}: not a readable ONNX file ({type(exc).__name__}); re-export it "
                        f"with `ganseg export onnx`") from None


def read_metadata(path_or_model: str | os.PathLike | onnx.ModelProto) -> dict[str, Any]:
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_checked(path_or_model)
    return parse_metadata({p.key: p.value for p in model.metadata_props})


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Full checker + strict shape inference; returns the shape-inferred model (raises on failure)."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def op_types(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, op_type) of every operator node, including nodes inside subgraphs and local functions.

    A call of a model-local function is not an operator (a runtime expands it into its body, which
    is walked), so it is not listed itself."""
    found: set[tuple[str, str]] = set()
    local = {(f.domain, f.name) for f in model.functions}

    def walk(nodes: Iterable[onnx.NodeProto]) -> None:
        for n in nodes:
            if (n.domain, n.op_type) not in local:
                found.add((n.domain or "", n.op_type))
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g.node)
                for g in a.graphs:
                    walk(g.node)

    walk(model.graph.node)
    for f in model.functions:
        walk(f.node)
    return found


def save_model(model: onnx.ModelProto, out: str | os.PathLike) -> Path:
    """Serialize in memory (all weights inline: these graphs are far below protobuf's 2 GB) and write atomically."""
    from ganseg.images import write_atomic

    out = Path(out)
    write_atomic(out, model.SerializeToString())
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def opset_of(model: onnx.ModelProto, domain: str = "") -> int:
    return next((o.version for o in model.opset_import if (o.domain or "") == domain), 0)


# ops whose value depends only on their inputs (no randomness, no shape-only trickery needed)
_FOLDABLE = frozenset({"Mul", "Div", "Add", "Sub", "Transpose", "Reshape", "Sqrt", "Reciprocal", "Pow", "Neg",
                       "Cast", "Unsqueeze", "Squeeze", "Identity", "Flip", "Tile", "Expand", "Concat", "Slice",
                       "ReduceSum", "ReduceMean"})


def fold_constants(model: onnx.ModelProto, max_elements: int = 64 * 1024 * 1024) -> onnx.ModelProto:
    """Evaluate nodes whose inputs are all initializers and store their outputs as initializers.

    Why: exporters leave weight arithmetic (e.g. StyleGAN's `weight * gain`, transposed weights for
    ConvTranspose) in the graph when the tensors are large. Folded, every Conv weight is an
    initializer, which TensorRT needs to pick tactics and to convert weights to FP16/INT8, and
    nothing is recomputed per inference. Values are unchanged (evaluated by onnx's reference runtime).
    The original initializers are dropped when nothing else uses them.
    """
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    opset = opset_of(model)
    consts = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for n in g.node:
        ins = [i for i in n.input if i]
        if (n.op_type in _FOLDABLE and (n.domain or "") == "" and ins and all(i in consts for i in ins)
                and not any(o in graph_outputs for o in n.output)
                and sum(int(np.prod(consts[i].dims)) for i in ins) <= max_elements):
            sub = helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in n.output],
                                    initializer=[consts[i] for i in dict.fromkeys(ins)])
            sm = helper.make_model(sub, opset_imports=[helper.make_opsetid("", opset)])
            values = ReferenceEvaluator(sm).run(None, {})
            for o, v in zip(n.output, values):
                t = numpy_helper.from_array(np.asarray(v), o)
                consts[o] = t
                g.initializer.append(t)
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | graph_outputs
    for f in model.functions:
        used |= {i for n in f.node for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    return model
