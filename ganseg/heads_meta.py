"""What export and serving read off a head and its generator, as public core functions.

Why a module of its own: the ONNX exporters (export/labeler.py, export/onnx_export.py) need a
weights identity and a head's class names. Both used to be taken from the `ganseg synthesize`
command module (`synthesize.fingerprint`, and the private `_head_class_names` behind a bare
`except`), so an export depended on a command's internals. Here they are public, torch-only (no
command imports), and the commands call them too.
"""
from __future__ import annotations

import hashlib

import torch


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, bytes): which weights made a dataset or a
    graph, independent of the file they were read from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_class_names(k: int) -> list[str]:
    """ganseg's face-part names for a 10-class head, else class0..class{k-1}."""
    from ganseg.labels import CLASS_NAMES

    return list(CLASS_NAMES) if k == len(CLASS_NAMES) else [f"class{i}" for i in range(k)]


def head_class_names(head) -> list[str]:
    """The class names a head (or ensemble) was trained with: the `class_names` its file records
    (`ganseg train-head` writes them from labels.json; `ganseg.heads.load_head` puts them in
    `.meta`), else `default_class_names`. A recorded list of the wrong length is ignored, as a
    mislabelled export would be worse than generic names."""
    from ganseg.heads import HeadEnsemble

    first = head.heads[0] if isinstance(head, HeadEnsemble) else head
    k = first.cfg.num_classes
    names = (getattr(head, "meta", None) or {}).get("class_names")
    if isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names):
        return list(names)
    return default_class_names(k)
