#!/usr/bin/env python
"""Make the reference fixtures in tests/fixtures/ with the ORIGINAL StyleGAN2 implementations.

Dev script, run by hand (CI never runs it and has no reference code).  It documents exactly how
every committed fixture was made.  It imports the reference code from local clones given on
the command line and never modifies them:

* NVlabs stylegan2-ada-pytorch   (--ada,  default /work/refs/ada,  commit d72cc7d)
* rosinality stylegan2-pytorch   (--rosi, default /work/refs/rosi, commit bef283a)

    PYTHONPATH=. .venv/bin/python tests/make_reference_fixtures.py            # small, committed
    PYTHONPATH=. .venv/bin/python tests/make_reference_fixtures.py --big      # + 256px, local only

Runtime shims (no file of the clones is edited):

* rosinality ``op/`` builds CUDA extensions at import (``torch.utils.cpp_extension.load``).
  While ``model`` is imported, ``load`` is replaced by a stub whose every attribute access
  raises, so any use of a compiled op would fail loudly; on CPU tensors rosinality takes its
  native paths (``upfirdn2d_native``, ``F.leaky_relu`` + bias, ``F.conv2d``/``conv_transpose2d``).
* rosinality's ``Generator`` hard-codes ``self.channels``; a subclass intercepts that one
  ``__setattr__`` to apply non-default widths.  Everything else is the original class.
* NVlabs ``dnnlib.util`` imports ``requests`` (URL downloads only) and ``training.augment``
  imports ``scipy.signal`` (``convolve`` of two 1-row filters in ``AugmentPipe.__init__``); when
  those packages are missing, tiny stand-ins are registered in ``sys.modules``.
  NVlabs custom CUDA ops are never built on CPU (``bias_act``/``upfirdn2d`` fall back to their
  reference implementations), and ``force_fp32=True`` is passed everywhere.

Committed outputs (tests/fixtures/):

* ``rosinality_32.pt``: ``torch.save({'g_ema', 'latent_avg', 'args'})`` like rosinality
  train.py / convert_weight.py (``args`` is an ``argparse.Namespace``).
* ``nvlabs_32.pkl``: ``pickle.dump({'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'})``
  made by NVlabs' own persistence code (``training_loop.py`` snapshot recipe), except that each
  persistent class's ``module_src`` is swapped for a short placeholder while pickling, so the file
  contains no NVlabs source.  The script checks that its opcode stream is identical to the
  genuine pickle's except for those strings.
* ``nvlabs_32_manifest.json``: dtype/shape/sha256 of every tensor in ``state_dict()`` of each
  network in ``nvlabs_32.pkl`` (exact values without storing the tensors twice), class names,
  init kwargs.
* ``{rosinality,nvlabs}_32_ref.safetensors``: reference outputs computed by the original code,
  float32 on CPU, eval mode; the metadata entry ``ganseg_reference`` holds a JSON description
  (generator kwargs, hook module names, exact calls, clamp statistics).

``--big`` additionally writes 256x256 checkpoints (NVlabs: channel_base=16384, channel_max=512,
8 mapping layers, num_fp16_res=4, conv_clamp=256; rosinality: channel_multiplier=2, 8 MLP layers)
and their reference outputs to ``--big-out`` (default /work/refs/big_fixtures), never committed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib
import io
import json
import math
import os
import pickle
import pickletools
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from ganseg.safe_pickle import restricted_load  # noqa: E402

# >= 256 characters, so pickle writes it with the same opcode (BINUNICODE) as the real source.
SOURCE_PLACEHOLDER = (
    "# Source of NVlabs module {} removed from this ganseg test fixture.\n"
    "# NVlabs persistence stores a module's full source here and exec()s it when unpickling;\n"
    "# ganseg never executes code embedded in network pickles (see ganseg/safe_pickle.py),\n"
    "# so the fixture carries only this comment. Made by tests/make_reference_fixtures.py.\n"
)
BATCH = 4
MAX_FIXTURE_BYTES = 1_500_000
MAX_TOTAL_BYTES = 5_000_000

# ----------------------------------------------------------------------------------------------
# Importing the reference code (runtime shims only)


class _NoCompiledOps:
    """Stands in for a CUDA extension module; any use raises."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"compiled op {self._name}.{attr} used; expected the CPU/native path")


def _git_commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def import_nvlabs(ada: Path):
    sys.dont_write_bytecode = True  # leave the clones untouched (no __pycache__)
    try:
        import requests  # noqa: F401  (pyflakes: availability probe)
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")  # only used for URL downloads
    try:
        import scipy.signal  # noqa: F401
    except ImportError:
        scipy = types.ModuleType("scipy")
        signal = types.ModuleType("scipy.signal")

        def convolve(a, b):  # the only call: convolve(Hz_fbank [4, n], [Hz_lo2] [1, m]) -> full 2-D
            a, b = np.asarray(a), np.asarray(b)
            assert a.ndim == 2 and b.ndim == 2 and b.shape[0] == 1
            return np.stack([np.convolve(row, b[0]) for row in a])

        signal.convolve = convolve
        scipy.signal = signal
        sys.modules["scipy"], sys.modules["scipy.signal"] = scipy, signal
    sys.path.insert(0, str(ada))
    import dnnlib
    from torch_utils import persistence
    from training import augment, networks

    assert Path(networks.__file__).resolve().is_relative_to(ada.resolve()), networks.__file__
    return types.SimpleNamespace(dnnlib=dnnlib, persistence=persistence, networks=networks, augment=augment,
                                 commit=_git_commit(ada))


def import_rosinality(rosi: Path):
    import torch.utils.cpp_extension as cpp_extension

    sys.dont_write_bytecode = True
    real_load = cpp_extension.load
    cpp_extension.load = lambda name, *args, **kwargs: _NoCompiledOps(name)
    sys.path.insert(0, str(rosi))
    try:
        model = importlib.import_module("model")
    finally:
        cpp_extension.load = real_load
    assert Path(model.__file__).resolve().is_relative_to(rosi.resolve()), model.__file__
    return types.SimpleNamespace(model=model, commit=_git_commit(rosi))


# ----------------------------------------------------------------------------------------------
# Helpers


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, g, std=1.0, mean=0.0):
    return torch.randn(shape, generator=g) * std + mean


def _signed_magnitude(shape, g, lo=0.1, scale=0.3):
    """Random sign times (lo + scale*|N(0,1)|): never close to zero, so the term always matters."""
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return sign * (lo + scale * torch.randn(shape, generator=g).abs())


def tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def manifest_of(sd: dict) -> dict:
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "sha256": tensor_sha256(v)} for k, v in sd.items()}


def jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    return obj


class FeatureHooks:
    """Forward hooks that record module outputs in call order."""

    def __init__(self, named_modules):
        self.names = [n for n, _ in named_modules]
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in named_modules]

    def _hook(self, name):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            self.outputs[name] = out.detach().clone()
            self.order.append(name)
        return hook

    def clear(self):
        self.outputs.clear()
        self.order.clear()

    def remove(self):
        for h in self._handles:
            h.remove()

    def features(self, prefix: str) -> dict[str, torch.Tensor]:
        assert self.order == self.names, (self.order, self.names)  # called once each, in order
        return {f"{prefix}_{i:02d}": self.outputs[n].float().contiguous() for i, n in enumerate(self.names)}


def write_reference(path: Path, tensors: dict, meta: dict) -> None:
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"ganseg_reference": json.dumps(meta, sort_keys=True)})
    os.chmod(path, 0o644)  # safetensors creates files 0600


def clamp_fraction(x: torch.Tensor, clamp: float) -> float:
    return float((x.abs() >= clamp * (1 - 1e-6)).float().mean())


# ----------------------------------------------------------------------------------------------
# rosinality


def make_rosinality(ref, *, size, style_dim, n_mlp, channel_multiplier, channels, seed):
    base = ref.model.Generator

    class WidthGenerator(base):  # the original class; only the hard-coded width table is overridden
        def __setattr__(self, name, value):
            if name == "channels" and channels:
                value = {**value, **channels}
            super().__setattr__(name, value)

    torch.manual_seed(seed)
    g = WidthGenerator(size, style_dim, n_mlp, channel_multiplier=channel_multiplier).eval()
    gen = _gen(seed + 1)
    lr_mlp = 0.01  # rosinality default lr_mlp
    kept = []
    with torch.no_grad():
        for name, t in g.state_dict(keep_vars=True).items():
            if name.startswith("style.") and name.endswith(".weight"):
                new = _randn(t.shape, gen) / lr_mlp  # same law as the init (equalized lr)
            elif name.startswith("style.") and name.endswith(".bias"):
                new = _randn(t.shape, gen, 0.5) / lr_mlp  # effective bias ~ N(0, 0.5^2)
            elif name == "input.input" or name.startswith("noises.noise_"):
                new = _randn(t.shape, gen)
            elif name.endswith("conv.modulation.weight") or name.endswith("conv.weight"):
                new = _randn(t.shape, gen)
            elif name.endswith("conv.modulation.bias"):
                new = _randn(t.shape, gen, 0.25, 1.0)  # init 1: keep styles away from 0
            elif name.endswith("noise.weight"):
                new = _signed_magnitude(t.shape, gen)
            elif name.endswith("activate.bias") or (name.startswith("to_rgb") and name.endswith(".bias")):
                new = _randn(t.shape, gen, 0.2)
            elif name.endswith(".kernel"):  # blur / upsample FIR filters: fixed [1,3,3,1], not learned
                kept.append(name)
                continue
            else:
                raise AssertionError(f"unhandled rosinality tensor {name}")
            t.copy_(new)
        latent_avg = g.style(torch.randn(1000, style_dim, generator=_gen(seed + 2))).mean(0)
    return g, latent_avg, kept


def rosinality_reference(ref, g, latent_avg, *, seed, batch, style_dim):
    n_latent = g.n_latent
    hook_names = ["conv1"] + [f"convs.{i}" for i in range(len(g.convs))]
    modules = dict(g.named_modules())
    hooks = FeatureHooks([(n, modules[n]) for n in hook_names])
    gen = _gen(seed + 10)
    z = torch.randn(batch, style_dim, generator=gen)
    with torch.no_grad():
        hooks.clear()
        img_psi07, ws_psi07 = g([z], truncation=0.7, truncation_latent=latent_avg, randomize_noise=False, return_latents=True)
        feats = hooks.features("feat_psi07")
        hooks.clear()
        img_psi10, ws_psi10 = g([z], randomize_noise=False, return_latents=True)
        hooks.clear()
        wplus = g.style(torch.randn(batch * n_latent, style_dim, generator=gen)).reshape(batch, n_latent, style_dim)
        img_wplus, _ = g([wplus], input_is_latent=True, randomize_noise=False)
        hooks.clear()
        zero_noise = [torch.zeros_like(getattr(g.noises, f"noise_{i}")) for i in range(g.num_layers)]
        img_none, _ = g([ws_psi07], input_is_latent=True, noise=zero_noise)
        hooks.remove()
        # cross-checks of the definitions stored below
        assert torch.allclose(ws_psi07, latent_avg + 0.7 * (ws_psi10 - latent_avg), atol=1e-5)
        img_again, _ = g([ws_psi07], input_is_latent=True, randomize_noise=False)
        assert torch.equal(img_again, img_psi07)
    tensors = dict(z=z, ws_psi07=ws_psi07, img_psi07=img_psi07, ws_psi10=ws_psi10, img_psi10=img_psi10,
                   wplus=wplus, img_wplus=img_wplus, img_none=img_none, **feats)
    calls = {
        "z": f"torch.randn({batch}, {style_dim}, generator=torch.Generator().manual_seed({seed + 10}))",
        "ws_psi07": "second output of g([z], truncation=0.7, truncation_latent=latent_avg, randomize_noise=False, return_latents=True)",
        "img_psi07": "first output of that call (noise = buffers noises.noise_{i})",
        "ws_psi10": "second output of g([z], randomize_noise=False, return_latents=True)",
        "img_psi10": "first output of that call",
        "wplus": "g.style(torch.randn(batch*n_latent, style_dim) from the same generator).reshape(batch, n_latent, style_dim)",
        "img_wplus": "g([wplus], input_is_latent=True, randomize_noise=False)[0]",
        "img_none": "g([ws_psi07], input_is_latent=True, noise=[zeros_like(noises.noise_i)])[0]  (noise off)",
        "feat_psi07_XX": "forward-hook outputs during the img_psi07 call, XX indexes hook_modules "
                         "(StyledConv output: modconv -> + noise.weight*noise -> FusedLeakyReLU(bias), i.e. lrelu(x+b,0.2)*sqrt(2))",
    }
    return tensors, hook_names, calls


def build_rosinality(ref, out_dir: Path, *, stem, size, style_dim, n_mlp, channel_multiplier, channels, seed, batch=BATCH):
    g, latent_avg, kept = make_rosinality(ref, size=size, style_dim=style_dim, n_mlp=n_mlp,
                                          channel_multiplier=channel_multiplier, channels=channels, seed=seed)
    ckpt_path = out_dir / f"{stem}.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg,
                "args": argparse.Namespace(size=size, latent=style_dim, n_mlp=n_mlp, channel_multiplier=channel_multiplier)},
               ckpt_path)
    tensors, hook_names, calls = rosinality_reference(ref, g, latent_avg, seed=seed, batch=batch, style_dim=style_dim)
    meta = {
        "format": "ganseg-reference/1",
        "implementation": "rosinality/stylegan2-pytorch model.Generator",
        "reference_commit": ref.commit,
        "checkpoint": ckpt_path.name,
        "checkpoint_keys": ["g_ema", "latent_avg", "args"],
        "generator_kwargs": {"size": size, "style_dim": style_dim, "n_mlp": n_mlp, "channel_multiplier": channel_multiplier,
                             "blur_kernel": [1, 3, 3, 1], "lr_mlp": 0.01},
        "channels": {str(k): v for k, v in g.channels.items() if k <= size},
        "n_latent": g.n_latent,
        "num_layers": g.num_layers,
        "hook_modules": hook_names,
        "calls": calls,
        "randomization": "style.*.weight ~ N(0,1)/0.01, style.*.bias ~ N(0,0.25)/0.01, input.input / conv weights / "
                         "modulation weights / noises.noise_i ~ N(0,1), modulation bias ~ 1+N(0,0.0625), "
                         "noise.weight = +-(0.1+0.3|N|), activate.bias / to_rgb bias ~ N(0,0.04); "
                         f"unchanged: {kept}; latent_avg = mean of g.style over 1000 z",
        "batch": batch, "dtype": "float32", "device": "cpu", "torch": torch.__version__, "seed": seed,
        "image_range": "raw generator output (nominally [-1, 1], not clipped)",
    }
    ref_path = out_dir / f"{stem}_ref.safetensors"
    write_reference(ref_path, tensors, meta)
    # The checkpoint must reload with torch's weights-only loader (plus argparse.Namespace).
    with torch.serialization.safe_globals([argparse.Namespace]):
        back = torch.load(ckpt_path, weights_only=True)
    assert all(torch.equal(back["g_ema"][k], v) for k, v in g.state_dict().items())
    print(f"rosinality {stem}: channels {meta['channels']}, n_latent {g.n_latent}, "
          f"img std {tensors['img_psi07'].std():.3f}")
    return [ckpt_path, ref_path]


# ----------------------------------------------------------------------------------------------
# NVlabs


def randomize_nvlabs_generator(G, gen, *, lr_multiplier=0.01):
    """Randomize every parameter and buffer except the fixed FIR filters (returns their names)."""
    kept = []
    with torch.no_grad():
        for name, t in G.state_dict(keep_vars=True).items():
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith("mapping.fc") and leaf == "weight":
                new = _randn(t.shape, gen) / lr_multiplier  # same law as the init (equalized lr)
            elif name.startswith("mapping.fc") and leaf == "bias":
                new = _randn(t.shape, gen, 0.5) / lr_multiplier  # effective bias ~ N(0, 0.5^2)
            elif name == "mapping.w_avg":
                continue  # set from the mapping below
            elif leaf in ("const", "weight", "noise_const"):
                new = _randn(t.shape, gen)
            elif name.endswith("affine.bias"):
                new = _randn(t.shape, gen, 0.25, 1.0)  # init 1: keep styles away from 0
            elif leaf == "bias":
                new = _randn(t.shape, gen, 0.2)
            elif leaf == "noise_strength":
                new = _signed_magnitude(t.shape, gen)
            elif leaf == "resample_filter":  # fixed [1,3,3,1] FIR filter buffers, not learned
                kept.append(name)
                continue
            else:
                raise AssertionError(f"unhandled NVlabs tensor {name}")
            t.copy_(new)
        w = G.mapping(torch.randn(1000, G.z_dim, generator=gen), None, truncation_psi=1, skip_w_avg_update=True)[:, 0]
        G.mapping.w_avg.copy_(w.mean(0) + _randn(w.shape[1:], gen, 0.25))  # not exactly the mean: must be loaded
    return kept


def nvlabs_layers(G):
    names = []
    for res in G.synthesis.block_resolutions:
        for conv in ("conv0", "conv1"):
            if hasattr(getattr(G.synthesis, f"b{res}"), conv):
                names.append(f"synthesis.b{res}.{conv}")
    return names


def nvlabs_reference(G, *, seed, batch):
    hook_names = nvlabs_layers(G)
    modules = dict(G.named_modules())
    hooks = FeatureHooks([(n, modules[n]) for n in hook_names])
    torgb = [(n, m) for n, m in G.named_modules() if n.endswith(".torgb")]
    rgb_hooks = FeatureHooks(torgb)
    gen = _gen(seed + 10)
    z = torch.randn(batch, G.z_dim, generator=gen)
    clamp = G.synthesis.b4.conv1.conv_clamp
    with torch.no_grad():
        ws_psi07 = G.mapping(z, None, truncation_psi=0.7)
        hooks.clear()
        rgb_hooks.clear()
        img_psi07 = G.synthesis(ws_psi07, noise_mode="const", force_fp32=True)
        feats = hooks.features("feat_psi07")
        stats = {}
        if clamp is not None:
            stats = {n: clamp_fraction(f, clamp) for n, f in zip(hook_names, feats.values())}
            stats.update({n: clamp_fraction(o, clamp) for n, o in rgb_hooks.outputs.items()})
        hooks.clear()
        ws_psi10 = G.mapping(z, None)
        img_psi10 = G.synthesis(ws_psi10, noise_mode="const", force_fp32=True)
        hooks.clear()
        wplus = G.mapping(torch.randn(batch * G.num_ws, G.z_dim, generator=gen), None)[:, 0].reshape(batch, G.num_ws, G.w_dim)
        img_wplus = G.synthesis(wplus, noise_mode="const", force_fp32=True)
        hooks.clear()
        img_none = G.synthesis(ws_psi07, noise_mode="none", force_fp32=True)
        hooks.remove()
        rgb_hooks.remove()
        assert torch.equal(G(z, None, truncation_psi=0.7, noise_mode="const", force_fp32=True), img_psi07)
    tensors = dict(z=z, ws_psi07=ws_psi07, img_psi07=img_psi07, ws_psi10=ws_psi10, img_psi10=img_psi10,
                   wplus=wplus, img_wplus=img_wplus, img_none=img_none, **feats)
    calls = {
        "z": f"torch.randn({batch}, z_dim, generator=torch.Generator().manual_seed({seed + 10}))",
        "ws_psi07": "G.mapping(z, None, truncation_psi=0.7)",
        "img_psi07": "G.synthesis(ws_psi07, noise_mode='const', force_fp32=True)",
        "ws_psi10": "G.mapping(z, None)",
        "img_psi10": "G.synthesis(ws_psi10, noise_mode='const', force_fp32=True)",
        "wplus": "G.mapping(torch.randn(batch*num_ws, z_dim) from the same generator, None)[:, 0].reshape(batch, num_ws, w_dim)",
        "img_wplus": "G.synthesis(wplus, noise_mode='const', force_fp32=True)",
        "img_none": "G.synthesis(ws_psi07, noise_mode='none', force_fp32=True)",
        "feat_psi07_XX": "forward-hook outputs during the img_psi07 call, XX indexes hook_modules (SynthesisLayer output: "
                         "modconv + noise_const*noise_strength, then bias_act: lrelu(x+b,0.2)*sqrt(2), clamp +-conv_clamp)",
    }
    return tensors, hook_names, calls, stats


def make_nvlabs(ref, *, z_dim, w_dim, resolution, mapping_kwargs, synthesis_kwargs, d_kwargs, seed, clamp_boost):
    dnnlib = ref.dnnlib
    torch.manual_seed(seed)
    # Exactly the train.py / training_loop.py construction path (EasyDict kwargs included).
    G_kwargs = dnnlib.EasyDict(class_name="training.networks.Generator", z_dim=z_dim, w_dim=w_dim,
                               mapping_kwargs=dnnlib.EasyDict(mapping_kwargs), synthesis_kwargs=dnnlib.EasyDict(synthesis_kwargs))
    D_kwargs = dnnlib.EasyDict(class_name="training.networks.Discriminator", block_kwargs=dnnlib.EasyDict(),
                               mapping_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=4), **d_kwargs)
    common_kwargs = dict(c_dim=0, img_resolution=resolution, img_channels=3)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common_kwargs).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common_kwargs).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    kept = randomize_nvlabs_generator(G_ema, _gen(seed + 1))
    if clamp_boost:
        # Make conv_clamp bite without blowing up the image: in the last SynthesisLayer, channel 0
        # gets bias +clamp/sqrt(2) and channel 1 bias -clamp/(0.2*sqrt(2)), i.e. both sit right at
        # the clamp threshold (lrelu gain sqrt(2), slope 0.2), so about half of their values clip
        # at +clamp resp. -clamp.  Their ToRGB input weights are scaled by 1/clamp so the image
        # stays O(1).  (ToRGB's own clamp is not reached: real images never get near +-256.)
        last = getattr(G_ema.synthesis, f"b{resolution}")
        clamp = last.conv1.conv_clamp
        with torch.no_grad():
            last.conv1.bias[0] = clamp / math.sqrt(2)
            last.conv1.bias[1] = -clamp / (0.2 * math.sqrt(2))
            last.torgb.weight[:, :2] /= clamp
    gen = _gen(seed + 3)
    with torch.no_grad():  # the training copy G differs from G_ema everywhere (a loader must pick G_ema)
        for (name, p), q in zip(G_ema.state_dict().items(), G.state_dict().values()):
            q.copy_(p if name.endswith("resample_filter") else p + _randn(p.shape, gen, 0.5))
    # train.py augpipe 'bgc' (the default), p as set by ADA during training
    augment_pipe = ref.augment.AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                                           brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1).train().requires_grad_(False)
    augment_pipe.p.copy_(torch.as_tensor(0.25))
    training_set_kwargs = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path="~/datasets/tiny.zip",
                                          use_labels=False, max_size=None, xflip=False, resolution=resolution)
    # training_loop.py snapshot recipe
    snapshot = dict(training_set_kwargs=dict(training_set_kwargs))
    for name, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", augment_pipe)]:
        if module is not None:
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        snapshot[name] = module
    return snapshot, kept


@contextlib.contextmanager
def sources_stripped(persistence):
    """Temporarily replace every persistent class's module_src with a placeholder (one distinct
    placeholder per source module, so pickle memoization -- hence the opcode stream -- is unchanged)."""
    saved = [(cls, cls._orig_module_src) for cls in persistence._decorators]
    placeholders = {}
    try:
        for cls, src in saved:
            if src not in placeholders:  # e.g. '... (training.networks)'
                placeholders[src] = SOURCE_PLACEHOLDER.format(cls.__mro__[1].__module__)
            cls._orig_module_src = placeholders[src]
        yield placeholders
    finally:
        for cls, src in saved:
            cls._orig_module_src = src


def _ops(data: bytes):
    # FRAME opcodes (protocol 4 framing) move with string lengths; they carry no structure.
    return [(op.name, arg) for op, arg, _ in pickletools.genops(data) if op.name != "FRAME"]


def check_same_structure(genuine: bytes, stripped: bytes, placeholders: dict) -> int:
    a, b = _ops(genuine), _ops(stripped)
    assert len(a) == len(b), (len(a), len(b))
    swapped = 0
    for (na, xa), (nb, xb) in zip(a, b):
        assert na == nb, (na, nb)
        if xa == xb:
            continue
        assert placeholders.get(xa) == xb, (na, str(xa)[:80], str(xb)[:80])
        swapped += 1
    return swapped


def pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle references, recorded while NVlabs' own code loads it (trusted here)."""
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(f"{module}.{name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return sorted(seen)


def build_nvlabs(ref, out_dir: Path, *, stem, z_dim, w_dim, resolution, mapping_kwargs, synthesis_kwargs, d_kwargs,
                 seed, clamp_boost, commit_safe: bool, batch=BATCH):
    snapshot, kept = make_nvlabs(ref, z_dim=z_dim, w_dim=w_dim, resolution=resolution, mapping_kwargs=mapping_kwargs,
                                 synthesis_kwargs=synthesis_kwargs, d_kwargs=d_kwargs, seed=seed, clamp_boost=clamp_boost)
    genuine = pickle.dumps(snapshot)  # exactly training_loop.py: pickle.dump(snapshot_data, f), default protocol
    with sources_stripped(ref.persistence) as placeholders:
        stripped = pickle.dumps(snapshot)
    swapped = check_same_structure(genuine, stripped, placeholders)
    assert swapped == len(placeholders), (swapped, placeholders.values())
    assert all(len(v.encode()) >= 256 for v in placeholders.values())
    assert b"import torch" not in stripped and b"def forward" not in stripped
    pkl_path = out_dir / f"{stem}.pkl"
    pkl_path.write_bytes(stripped if commit_safe else genuine)
    if not commit_safe:
        (out_dir / f"{stem}_no_source.pkl").write_bytes(stripped)

    # The genuine pickle round-trips through NVlabs' own unpickling (legacy.load_network_pkl is
    # pickle.load plus TF conversion; legacy.py itself needs `click`), which execs module_src;
    # both files load with restricted_load.
    legacy_data = pickle.loads(genuine)
    ours_stripped = restricted_load(io.BytesIO(stripped))
    ours_genuine = restricted_load(io.BytesIO(genuine))
    for key in ("G", "D", "G_ema", "augment_pipe"):
        expected = snapshot[key].state_dict()
        for data in (legacy_data[key].state_dict(), ours_stripped[key].state_dict(), ours_genuine[key].state_dict()):
            assert list(data) == list(expected) and all(torch.equal(data[k], v) for k, v in expected.items()), key
        assert ours_stripped[key].class_name == type(snapshot[key]).__name__
        assert ours_stripped[key].init_kwargs == jsonable(dict(snapshot[key].init_kwargs))

    G = snapshot["G_ema"]
    tensors, hook_names, calls, clamp_stats = nvlabs_reference(G, seed=seed, batch=batch)
    # the same outputs from the network as NVlabs' loader rebuilds it from the genuine file
    with torch.no_grad():
        again = legacy_data["G_ema"].synthesis(tensors["ws_psi07"], noise_mode="const", force_fp32=True)
    assert torch.equal(again, tensors["img_psi07"])

    manifest = {
        "file": pkl_path.name,
        "keys": sorted(snapshot),
        "class_names": {k: (type(v).__name__ if v is not None else None) for k, v in snapshot.items() if k != "training_set_kwargs"},
        "init_kwargs": {k: jsonable(dict(v.init_kwargs)) for k, v in snapshot.items() if hasattr(v, "init_kwargs")},
        "training_set_kwargs": snapshot["training_set_kwargs"],
        "state_dicts": {k: manifest_of(v.state_dict()) for k, v in snapshot.items() if isinstance(v, torch.nn.Module)},
        "globals": pickle_globals(genuine),
        "module_src_placeholders": sorted(placeholders.values()) if commit_safe else None,
    }
    man_path = out_dir / f"{stem}_manifest.json"
    man_path.write_text(json.dumps(manifest, indent=1) + "\n")  # key order = state_dict order

    meta = {
        "format": "ganseg-reference/1",
        "implementation": "NVlabs stylegan2-ada-pytorch training.networks.Generator",
        "reference_commit": ref.commit,
        "checkpoint": pkl_path.name,
        "network": "G_ema",
        "generator_kwargs": jsonable(dict(G.init_kwargs)),
        "channels": {str(r): int(getattr(G.synthesis, f"b{r}").conv1.weight.shape[0]) for r in G.synthesis.block_resolutions},
        "num_ws": G.num_ws,
        "hook_modules": hook_names,
        "calls": calls,
        "clamp_fraction": clamp_stats,
        "randomization": "mapping.fc*.weight ~ N(0,1)/0.01, mapping.fc*.bias ~ N(0,0.25)/0.01, const / weights / "
                         "noise_const ~ N(0,1), affine.bias ~ 1+N(0,0.0625), other biases ~ N(0,0.04), "
                         "noise_strength = +-(0.1+0.3|N|), w_avg = mean of mapping over 1000 z + N(0,0.0625); "
                         + (f"clamp: b{resolution}.conv1.bias[0] = conv_clamp/sqrt(2), b{resolution}.conv1.bias[1] = "
                            f"-conv_clamp/(0.2*sqrt(2)), b{resolution}.torgb.weight[:, :2] /= conv_clamp; " if clamp_boost else "")
                         + f"unchanged: resample_filter buffers ({len(kept)}); G = G_ema + N(0,0.25) (training copy)",
        "batch": batch, "dtype": "float32", "device": "cpu", "torch": torch.__version__, "seed": seed,
        "image_range": "raw generator output (nominally [-1, 1], not clipped)",
    }
    ref_path = out_dir / f"{stem}_ref.safetensors"
    write_reference(ref_path, tensors, meta)
    print(f"nvlabs {stem}: channels {meta['channels']}, num_ws {G.num_ws}, img std {tensors['img_psi07'].std():.3f}")
    print(f"  clamp fractions: { {k: round(v, 4) for k, v in clamp_stats.items()} }")
    print(f"  globals: {manifest['globals']}")
    return [pkl_path, man_path, ref_path]


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ada", type=Path, default=Path("/work/refs/ada"), help="NVlabs stylegan2-ada-pytorch clone")
    p.add_argument("--rosi", type=Path, default=Path("/work/refs/rosi"), help="rosinality stylegan2-pytorch clone")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures")
    p.add_argument("--big", action="store_true", help="also write 256px checkpoints + outputs (local only)")
    p.add_argument("--big-out", type=Path, default=Path("/work/refs/big_fixtures"))
    p.add_argument("--skip-small", action="store_true", help="with --big: do not rewrite the committed fixtures")
    args = p.parse_args(argv)

    torch.set_grad_enabled(False)
    nv = import_nvlabs(args.ada)
    ro = import_rosinality(args.rosi)

    if not args.skip_small:
        args.out.mkdir(parents=True, exist_ok=True)
        files = build_rosinality(ro, args.out, stem="rosinality_32", size=32, style_dim=64, n_mlp=3, channel_multiplier=2,
                                 channels={4: 64, 8: 48, 16: 32, 32: 16}, seed=1000)
        files += build_nvlabs(nv, args.out, stem="nvlabs_32", z_dim=48, w_dim=48, resolution=32,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=512, channel_max=48, num_fp16_res=2, conv_clamp=256),
                              d_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=2, conv_clamp=256),
                              seed=2000, clamp_boost=True, commit_safe=True)
        total = 0
        for f in files:
            size = f.stat().st_size
            total += size
            print(f"  {f.relative_to(REPO) if f.is_relative_to(REPO) else f}: {size:,} bytes")
            assert size < MAX_FIXTURE_BYTES, f"{f} is too large"
        assert total < MAX_TOTAL_BYTES, total
        print(f"  total {total:,} bytes")

    if args.big:
        args.big_out.mkdir(parents=True, exist_ok=True)
        build_rosinality(ro, args.big_out, stem="rosinality_256", size=256, style_dim=512, n_mlp=8, channel_multiplier=2,
                         channels=None, seed=3000, batch=2)
        build_nvlabs(nv, args.big_out, stem="nvlabs_256", z_dim=512, w_dim=512, resolution=256,
                     mapping_kwargs=dict(num_layers=8),
                     synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256),
                     d_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256),
                     seed=4000, clamp_boost=True, commit_safe=False, batch=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
