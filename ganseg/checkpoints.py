"""Load StyleGAN2 generators from rosinality `.pt`, NVlabs `.pkl` and ganseg `.safetensors` files.

Nothing here executes code from a checkpoint:
- `.pt` files go through `torch.load(weights_only=True)` (only `argparse.Namespace` is added, as
  rosinality checkpoints carry their training args);
- NVlabs `.pkl` files embed Python source; `ganseg.safe_pickle` rebuilds tensors and plain data
  only and never imports or runs that source;
- ganseg's own format is a tagged safetensors file (`ganseg.tagged`: no pickle at all) with the
  config as JSON metadata.
Every source is converted into `ganseg.stylegan2.Generator`'s parameter names.

The discriminator that goes with a generator (ganseg's safetensors + config JSON only) is read
here too (`load_discriminator`; the bundled one: `default_discriminator_for`).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from pathlib import Path

import torch

from ganseg import tagged
from ganseg.errors import BadInput, MissingFile, UserError
from ganseg.stylegan2 import Discriminator, Generator, GeneratorConfig, blur_kernel_2d, resolutions_up_to

GANSEG_FORMAT = "ganseg.stylegan2/1"
DEFAULT_GENERATOR = Path(__file__).parent / "weights" / "default_generator.safetensors"
# pickle protocol 2, then LONG1 of torch's legacy magic number 0x1950a86a20f9469cfc6c
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupt, unsafe or of an unsupported kind."""


# --------------------------------------------------------------------------------------------
# Public entry point

def load_generator(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Generator:
    """Load a generator in eval mode: rosinality `.pt`, NVlabs `.pkl`, or ganseg `.safetensors`.

    With no path, loads ganseg's bundled default generator (trained on the procedural face domain).
    """
    path = Path(path) if path is not None else DEFAULT_GENERATOR
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint: pass the generator file inside it "
                              f"(a .safetensors, rosinality .pt or NVlabs .pkl)")
    if not path.is_file():
        hint = " (the bundled default generator is missing from this install)" if path == DEFAULT_GENERATOR else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    cfg, state = read_generator_state(path)
    G = Generator(cfg)
    missing, unexpected = G.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: checkpoint does not fit the generator it describes "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return G.eval().requires_grad_(False).to(device)


def read_generator_state(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """(config, ganseg state dict) from any supported file, chosen by content, not by suffix."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path}: file is empty or truncated ({len(head)} bytes)")
    if _looks_like_safetensors(path, head):
        return _read_ganseg(path)
    if head[:4] == b"PK\x03\x04":  # torch.save's zip container (possibly truncated)
        return _from_torch_file(path)
    if head[:14] == LEGACY_TORCH_MAGIC:  # torch.save(..., _use_new_zipfile_serialization=False)
        return _from_torch_file(path)
    if head[:1] == b"\x80":  # a raw pickle stream: an NVlabs network pickle
        return _from_nvlabs_pickle(path)
    raise CheckpointError(f"{path}: not a recognised checkpoint (expected a rosinality .pt, an NVlabs "
                          f".pkl or a ganseg .safetensors file)")


# --------------------------------------------------------------------------------------------
# ganseg's own format

def save_generator(G: Generator, path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   extra_metadata: dict | None = None) -> None:
    """Write weights (fp16 storage is fine for shipping) + JSON config as a tagged safetensors file
    (`ganseg.tagged`; atomic). `extra_metadata` values are stored JSON-encoded."""
    state = {k: v.detach().to("cpu", dtype) for k, v in G.state_dict().items()}
    tagged.save(path, state, GANSEG_FORMAT, {"config": G.cfg.to_dict(), **(extra_metadata or {})})


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def _read_ganseg(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    try:
        tensors, meta = tagged.load(path, GANSEG_FORMAT, what="ganseg generator",
                                    hint="save generators with ganseg.save_generator or `ganseg train-gan`")
    except tagged.TaggedFileError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        cfg = GeneratorConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its generator config is missing or invalid ({type(exc).__name__}: "
                              f"{exc}); re-save it with ganseg.save_generator") from None
    return cfg, {k: v.float() for k, v in tensors.items()}


# --------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch

def _from_torch_file(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = re.search(r"GLOBAL ([\w.]+)", str(exc))
        culprit = f" it references {what.group(1)}, which could run code;" if what else ""
        raise CheckpointError(f"{path}: refused to load:{culprit} only tensors and plain data are "
                              f"accepted ({str(exc).splitlines()[0]})") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated torch checkpoint ({exc})") from None
    if isinstance(ckpt, dict) and "g_ema" in ckpt:
        return from_rosinality(ckpt["g_ema"], ckpt.get("latent_avg"), path)
    if isinstance(ckpt, dict) and "style.1.weight" in ckpt:  # a bare g_ema state dict
        return from_rosinality(ckpt, None, path)
    keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f"{path}: torch file holds no StyleGAN2 generator (expected rosinality "
                          f"'g_ema'; found {keys})")


def from_rosinality(sd: dict, latent_avg: torch.Tensor | None, path: Path | str = "<state>",
                    lr_mlp: float = 0.01) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Convert a rosinality `Generator` state dict. Widths come from the weights themselves.

    rosinality does not store `lr_mlp` (always 0.01 in its training script); pass another if yours
    differed. Without `latent_avg`, w_avg is estimated from 10k fixed-seed z (deterministic).
    """
    try:
        n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
        n_up = len([k for k in sd if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k)])
        resolution = 4 * 2**n_up
        channels = [sd["conv1.conv.weight"].shape[1]] + [
            sd[f"convs.{2 * i + 1}.conv.weight"].shape[1] for i in range(n_up)]
        w_dim = sd["style.1.weight"].shape[0]
        z_dim = sd["style.1.weight"].shape[1]
        hidden = sd["style.1.weight"].shape[0] if n_mlp > 1 else None
        blur = _blur_1d(sd["convs.0.conv.blur.kernel"], path) if n_up else [1.0, 3.0, 3.0, 1.0]
        cfg = GeneratorConfig(resolution=resolution, z_dim=z_dim, w_dim=w_dim, mapping_layers=n_mlp,
                              mapping_hidden=hidden, mapping_lr_mul=lr_mlp, channels=channels,
                              blur_kernel=blur, img_channels=sd["to_rgb1.bias"].shape[1])
        out = {"synthesis.const": sd["input.input"][0]}
        for i in range(n_mlp):
            out[f"mapping.layers.{i}.weight"] = sd[f"style.{i + 1}.weight"]
            out[f"mapping.layers.{i}.bias"] = sd[f"style.{i + 1}.bias"]
        src_convs = ["conv1"] + [f"convs.{j}" for j in range(2 * n_up)]
        for i, src in enumerate(src_convs):
            dst = f"synthesis.convs.{i}"
            out[f"{dst}.conv.weight"] = sd[f"{src}.conv.weight"][0]
            out[f"{dst}.conv.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
            out[f"{dst}.conv.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
            out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape([])
            out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
            out[f"{dst}.noise_const"] = sd[f"noises.noise_{i}"][0, 0]
        for i, src in enumerate(["to_rgb1"] + [f"to_rgbs.{j}" for j in range(n_up)]):
            out[f"synthesis.to_rgbs.{i}.conv.weight"] = sd[f"{src}.conv.weight"][0]
            out[f"synthesis.to_rgbs.{i}.conv.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
            out[f"synthesis.to_rgbs.{i}.conv.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
            out[f"synthesis.to_rgbs.{i}.bias"] = sd[f"{src}.bias"].reshape(-1)
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a rosinality StyleGAN2 generator: missing {exc}") from None
    out["synthesis.blur_kernel"] = blur_kernel_2d(cfg.blur_kernel)
    out = {k: v.float() for k, v in out.items()}
    out["mapping.w_avg"] = (latent_avg.reshape(-1).float() if latent_avg is not None
                            else _estimate_w_avg(cfg, out))
    return cfg, out


# --------------------------------------------------------------------------------------------
# NVlabs stylegan2-ada-pytorch / stylegan3 (networks_stylegan2)

def _from_nvlabs_pickle(path: Path) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    from ganseg.safe_pickle import PersistentModule, UnsafePickleError, restricted_load

    try:
        data = restricted_load(path)
    except UnsafePickleError as exc:
        raise CheckpointError(f"{path}: refused to load: {exc}") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from None
    net = data.get("G_ema", data.get("G")) if isinstance(data, dict) else None
    if not isinstance(net, PersistentModule):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: pickle holds no NVlabs generator ('G_ema' or 'G'; found {found})")
    return from_nvlabs(net, path)


def from_nvlabs(net, path: Path | str = "<pickle>") -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Convert an NVlabs StyleGAN2 `Generator` (a `PersistentModule` record) into ganseg names."""
    kw = net.init_kwargs
    syn_kw = dict(kw.get("synthesis_kwargs") or {})
    map_kw = dict(kw.get("mapping_kwargs") or {})
    if net.class_name != "Generator" or "synthesis.b4.const" not in (sd := net.state_dict()):
        raise CheckpointError(f"{path}: '{net.class_name}' is not a StyleGAN2 generator (StyleGAN3 "
                              f"alias-free generators are not supported)")
    if kw.get("c_dim", 0):
        raise CheckpointError(f"{path}: conditional generators (c_dim={kw['c_dim']}) are not supported")
    if syn_kw.get("architecture", "skip") != "skip":
        raise CheckpointError(f"{path}: synthesis architecture {syn_kw['architecture']!r} is not supported "
                              f"(only 'skip', the StyleGAN2 config-e/f default)")
    resolution = int(kw["img_resolution"])
    res = resolutions_up_to(resolution)
    n_map = len([k for k in sd if re.fullmatch(r"mapping\.fc\d+\.weight", k)])
    channels = [sd[f"synthesis.b{r}.conv1.weight"].shape[0] for r in res]
    blur = _blur_1d(sd["synthesis.b4.resample_filter"], path)
    w_dim = int(kw["w_dim"])
    cfg = GeneratorConfig(
        resolution=resolution, z_dim=int(kw["z_dim"]), w_dim=w_dim, mapping_layers=n_map,
        mapping_hidden=sd["mapping.fc0.weight"].shape[0] if n_map > 1 else None,
        mapping_lr_mul=float(map_kw.get("lr_multiplier", 0.01)), channels=channels, blur_kernel=blur,
        conv_clamp=float(syn_kw["conv_clamp"]) if syn_kw.get("conv_clamp") is not None else None,
        img_channels=int(kw.get("img_channels", 3)))
    out = {"synthesis.const": sd["synthesis.b4.const"]}
    for i in range(n_map):
        out[f"mapping.layers.{i}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"mapping.layers.{i}.bias"] = sd[f"mapping.fc{i}.bias"]
    srcs = ["synthesis.b4.conv1"] + [f"synthesis.b{r}.conv{j}" for r in res[1:] for j in (0, 1)]
    layer_res = [res[0]] + [r for r in res[1:] for _ in (0, 1)]
    for i, (src, r) in enumerate(zip(srcs, layer_res)):
        dst = f"synthesis.convs.{i}"
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.conv.affine.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.affine.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"]
        # use_noise=False layers have neither buffer: zero strength makes noise a no-op.
        out[f"{dst}.noise_strength"] = sd.get(f"{src}.noise_strength", torch.zeros([]))
        out[f"{dst}.noise_const"] = sd.get(f"{src}.noise_const", torch.zeros(r, r))
    for i, r in enumerate(res):
        src = f"synthesis.b{r}.torgb"
        out[f"synthesis.to_rgbs.{i}.conv.weight"] = sd[f"{src}.weight"]
        out[f"synthesis.to_rgbs.{i}.conv.affine.weight"] = sd[f"{src}.affine.weight"]
        out[f"synthesis.to_rgbs.{i}.conv.affine.bias"] = sd[f"{src}.affine.bias"]
        out[f"synthesis.to_rgbs.{i}.bias"] = sd[f"{src}.bias"]
    out["synthesis.blur_kernel"] = blur_kernel_2d(cfg.blur_kernel)
    out = {k: v.float() for k, v in out.items()}
    out["mapping.w_avg"] = (sd["mapping.w_avg"].float() if "mapping.w_avg" in sd
                            else _estimate_w_avg(cfg, out))
    return cfg, out


# --------------------------------------------------------------------------------------------
# helpers

def _blur_1d(kernel: torch.Tensor, path) -> list[float]:
    """Recover the 1-D FIR taps from a stored (1-D or separable 2-D) resampling filter."""
    k = kernel.double()
    if k.ndim == 2:
        k1 = k.sum(dim=0)
        if not torch.allclose(k1[:, None] * k1[None, :] / k1.sum(), k, rtol=1e-5, atol=1e-6 * float(k.abs().max())):
            raise CheckpointError(f"{path}: non-separable blur kernels are not supported")
        k = k1
    k = k / k.sum()
    return [float(v) for v in k * (1.0 / float(k.min()) if float(k.min()) > 0 else 1.0)]


def _estimate_w_avg(cfg: GeneratorConfig, state: dict[str, torch.Tensor], n: int = 10_000) -> torch.Tensor:
    G = Generator(cfg)
    G.load_state_dict({**G.state_dict(), **state})
    with torch.no_grad():
        z = torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(0))
        return G.mapping(z).mean(dim=0)


# --------------------------------------------------------------------------------------------
# The discriminator (ganseg's format only)

def load_discriminator(path: str | os.PathLike | None) -> Discriminator | None:
    """A ganseg discriminator file (safetensors + config JSON), or None; in eval mode, frozen.

    GAN inversion (`ganseg invert`, `segment --method invert`, `train-head --real`, the inverted
    protocol) uses its features as the perceptual term, and `train-gan --init` warm-starts from one.
    `ganseg train-gan`'s export (and tools/gpu_pass.py) write the file beside the generator."""
    if path is None:
        return None
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a folder: pass the discriminator .safetensors file inside it")
    if not path.is_file():
        raise MissingFile(f"discriminator not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            cfg = json.loads((f.metadata() or {}).get("config", "{}"))
            state = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors/json raise several types for a bad file
        raise BadInput(f"{path}: not a readable discriminator file ({type(exc).__name__}: {exc})") from None
    if not isinstance(cfg, dict) or "resolution" not in cfg:
        raise BadInput(f"{path}: not a ganseg discriminator file (no config metadata)")
    D = Discriminator(cfg["resolution"], cfg["channels"])
    try:
        D.load_state_dict(state)
    except RuntimeError as exc:
        raise BadInput(f"{path}: weights do not fit the discriminator config ({' '.join(str(exc).split())[:200]})") from None
    return D.eval().requires_grad_(False)


def default_discriminator_for(ckpt: str | None) -> Path | None:
    """The bundled discriminator goes with the bundled generator only."""
    p = DEFAULT_GENERATOR.with_name("default_discriminator.safetensors")
    return p if ckpt is None and p.is_file() else None


__all__ = ["CheckpointError", "load_generator", "save_generator", "read_generator_state",
           "from_rosinality", "from_nvlabs", "DEFAULT_GENERATOR", "GANSEG_FORMAT", "load_discriminator",
           "default_discriminator_for"]
