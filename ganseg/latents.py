"""Latents: seed -> z, and the latents file `ganseg sample` writes beside its images.

z for seed s is `np.random.RandomState(s).randn(z_dim)` (the NVlabs generate.py convention), so a
seed names the same image here, in the original tools and in every stage: `sample`, `synthesize`,
the simulated annotator, the ONNX labeler's parity inputs, the TensorRT calibration z.

latents.safetensors holds seeds [N] int64, z [N, z_dim] and w [N, num_ws, w_dim] (after
truncation: what `G.synthesize(w=...)` takes), plus an "info" JSON (the generator, truncation psi
and noise mode that made the images). `ganseg annotate`, `train-head` and `invert` read or write it.

Why a module of its own: these were functions of the `ganseg sample` command module, so the
exporters, the shot loader and the painter imported a command to get a seed's z.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ganseg.errors import BadInput, MissingFile
from ganseg.images import write_atomic

__all__ = ["z_from_seeds", "save_latents", "load_latents"]


def z_from_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    """float32 [len(seeds), z_dim]: row i is RandomState(seeds[i]).randn(z_dim), whatever the batch."""
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def save_latents(path: Path, seeds: list[int], z: torch.Tensor, w: torch.Tensor, info: dict) -> None:
    """seeds [N] int64, z [N, z_dim], w [N, num_ws, w_dim] (after truncation): what `synthesize(w=...)` takes."""
    from safetensors.torch import save

    tensors = {"seeds": torch.tensor(seeds, dtype=torch.int64), "z": z.contiguous(), "w": w.contiguous()}
    write_atomic(path, save(tensors, metadata={"info": json.dumps(info)}))


def load_latents(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, info) from a latents file written by `save_latents`."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise MissingFile(f"latents file not found: {path} (`ganseg sample` writes it beside the images)")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors/json raise several types for a bad file
        raise BadInput(f"{path}: unreadable latents file ({type(exc).__name__}: {exc}); rerun `ganseg sample` "
                       f"to write it again") from None
    missing = [k for k in ("seeds", "w") if k not in tensors]
    if missing:
        raise BadInput(f"{path}: not a `ganseg sample` latents file (no {missing}); rerun `ganseg sample`")
    return tensors, info
