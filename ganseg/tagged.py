"""Tagged safetensors: the one file format for ganseg's weights (generator, heads, UNet, exports).

Why one helper: the generator, head and UNet each had their own save/load with slightly different
checks and messages (a folder said "not found", a wrong file raised a bare ValueError). Now every
weight file is written and read the same way, and every way a file can be unusable raises a
`TaggedFileError` whose one-line message names the file, what is wrong and the fix.

Layout: a plain safetensors file (tensors, no pickle, so loading never runs code) whose string
header metadata holds

    "format"   the tag, "<kind>/<version>", e.g. "ganseg.head/1": readers refuse other tags
    other keys JSON-encoded values (configs, class names, training info)

Files written before this helper stored some generator metadata as raw strings ("step": "3600");
`load` returns a value that is not valid JSON as the raw string, so every existing file stays
readable. Writes are atomic (`ganseg.images.write_atomic`): a killed run leaves the old file or the
new one, never half of one. Writes are also deterministic (the header's keys are sorted): the same
tensors and metadata give the same bytes, so a file's sha256 identifies its content.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ganseg.errors import UserError
from ganseg.images import write_atomic

__all__ = ["TaggedFileError", "TaggedFileMissing", "save", "load", "read_meta", "encode_meta", "decode_meta",
           "state_sha256"]


class TaggedFileError(UserError, ValueError):
    """A weight file that cannot be used (a folder, not safetensors, corrupt, another format)."""


class TaggedFileMissing(TaggedFileError, FileNotFoundError):
    """A weight file that does not exist."""

    def __str__(self) -> str:  # OSError's str() would prepend an errno when given two arguments
        return str(self.args[0]) if self.args else ""


def encode_meta(format_tag: str, meta: Mapping[str, Any] | None = None) -> dict[str, str]:
    """safetensors header metadata: {"format": tag} plus every value of `meta` JSON-encoded."""
    meta = dict(meta or {})
    if "format" in meta:
        raise ValueError("'format' is reserved for the format tag; pass it as format_tag")
    out = {"format": str(format_tag)}
    for k, v in meta.items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be strings, got {k!r}")
        out[k] = json.dumps(v)
    return out


def decode_meta(raw: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of encode_meta; "format" and values that are not JSON (older files) stay strings."""
    out: dict[str, Any] = {}
    for k, v in sorted(raw.items()):
        if k == "format":
            out[k] = v
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def save(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], format_tag: str,
         meta: Mapping[str, Any] | None = None) -> None:
    """Write `tensors` (moved to CPU, made contiguous; dtype kept) and JSON `meta` under `format_tag`."""
    from safetensors.torch import save as st_save

    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(path, _canonical(st_save(state, metadata=encode_meta(format_tag, meta))))


def _canonical(blob: bytes) -> bytes:
    """The same file with its JSON header's keys sorted, so equal content gives equal bytes.

    safetensors keeps metadata in a hash map, so with several keys their order (and the file's
    sha256) changes from run to run. Tensor offsets are relative to the data section, which is
    left untouched; the header is padded with spaces to a multiple of 8, as safetensors does.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8: 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def read_meta(path: str | os.PathLike, expected_format: str | tuple[str, ...], what: str = "weights",
              hint: str = "") -> dict[str, Any]:
    """Only the (decoded) metadata, after the same checks as `load`; reads no tensor data."""
    return _open(Path(path), expected_format, what, hint, with_tensors=False)[1]


def load(path: str | os.PathLike, expected_format: str | tuple[str, ...], what: str = "weights",
         hint: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors on CPU, decoded metadata incl. "format") of a file tagged `expected_format`.

    `expected_format` may be a tuple of accepted tags. `what` names the kind of file in messages
    ("ganseg head"), `hint` says how to get a right one ("train one with `ganseg train-head`").
    Raises `TaggedFileMissing` (missing) or `TaggedFileError` (a folder, not safetensors, corrupt or
    truncated, another format tag).
    """
    return _open(Path(path), expected_format, what, hint, with_tensors=True)


def _open(path: Path, expected: str | tuple[str, ...], what: str, hint: str, with_tensors: bool):
    from safetensors import SafetensorError, safe_open

    accepted = (expected,) if isinstance(expected, str) else tuple(expected)
    fix = f"; {hint}" if hint else ""
    if not path.exists():
        raise TaggedFileMissing(f"{path}: {what} file not found{fix}")
    if path.is_dir():
        raise TaggedFileError(f"{path}: is a folder, expected a {what} file (.safetensors){fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tag = raw.get("format")
            if tag not in accepted:
                want = accepted[0] if len(accepted) == 1 else " or ".join(map(repr, accepted))
                raise TaggedFileError(f"{path}: not a {what} file (format={tag!r}, expected {want!r}){fix}")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except SafetensorError as exc:  # bad header, truncated data, not safetensors at all
        msg = " ".join(str(exc).split())[:200]
        raise TaggedFileError(f"{path}: not a {what} file: not safetensors, or corrupt or truncated "
                              f"({msg}){fix}") from None
    except OSError as exc:
        raise TaggedFileError(f"{path}: cannot read this {what} file ({exc.strerror or exc}); check that it "
                              f"is readable") from None
    return tensors, decode_meta(raw)


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, bytes): which weights made a dataset or a
    graph, independent of the file they were read from (synthesize's manifests and the ONNX
    exports record it for the generator, the head and the UNet)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
