"""ganseg: turn a pretrained StyleGAN2 into a one-shot semantic part segmenter, and ship it.

    from ganseg import load_generator
    G = load_generator()                      # bundled default; or a .pt / .pkl / .safetensors path
    img = G.synthesize(z=z, truncation_psi=0.7)                     # images only
    img, feats = G.synthesize_features(z=z, truncation_psi=0.7)     # images + every layer's features

The names below are loaded on first use (PEP 562), so `import ganseg.cli` / `ganseg --help` and the
light modules (`ganseg.errors`, `ganseg.paths`) do not pay for importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["load_generator", "save_generator", "CheckpointError", "Generator", "GeneratorConfig", "UserError"]

_LAZY = {"load_generator": "ganseg.checkpoints", "save_generator": "ganseg.checkpoints",
         "CheckpointError": "ganseg.checkpoints", "Generator": "ganseg.stylegan2",
         "GeneratorConfig": "ganseg.stylegan2", "UserError": "ganseg.errors"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ganseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
