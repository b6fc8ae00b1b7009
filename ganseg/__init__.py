"""ganseg: turn a pretrained StyleGAN2 into a one-shot semantic part segmenter, and ship it.

    from ganseg import load_generator
    G = load_generator()                      # bundled default; or a .pt / .pkl / .safetensors path
    img, feats = G.synthesize(z=z, truncation_psi=0.7, noise_mode="const", return_features=True)
"""
from ganseg.checkpoints import CheckpointError, load_generator, save_generator
from ganseg.stylegan2 import Generator, GeneratorConfig

__version__ = "0.1.0"
__all__ = ["load_generator", "save_generator", "CheckpointError", "Generator", "GeneratorConfig"]
