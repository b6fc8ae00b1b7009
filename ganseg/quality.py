"""GAN quality figures that work offline (no Inception weights exist here).

A small UNet *probe* is trained, supervised, on rendered images + exact masks of the procedural
domain. Two figures come from it:
(a) Fréchet distance between rendered and generated images in the probe's feature space (pooled
    encoder activations), next to the same distance between two disjoint rendered sets — the
    floor a perfect generator would reach;
(b) the share of generated images in which the probe finds skin, both eyes, a nose and a mouth,
    next to the same share on rendered images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganseg.images import from_uint8, write_atomic
from ganseg.unet import UNet, UNetConfig

PROBE_DIR = Path(__file__).parent / "weights"


# --------------------------------------------------------------------------------------------
# pure math

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows of a and b."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ev, vec = np.linalg.eigh(s1)
    root1 = (vec * np.sqrt(ev.clip(0))) @ vec.T
    tr_sqrt = np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1).clip(0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def count_components(mask: torch.Tensor, min_pixels: int = 2) -> torch.Tensor:
    """Connected components (8-neighbourhood) of bool masks [N, H, W] with >= min_pixels each."""
    n, h, w = mask.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w).expand(n, -1, -1).clone()
    labels = labels * mask
    for _ in range(h * w):  # propagate the max label inside each component until stable
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * mask
        if torch.equal(grown, labels):
            break
        labels = grown
    counts = []
    for lab in labels:
        ids, sizes = torch.unique(lab[lab > 0], return_counts=True)
        counts.append(int((sizes >= min_pixels).sum()))
    return torch.tensor(counts)


def parts_found(labels: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """bool [N]: skin, two eyes, nose and mouth all present in predicted label maps [N, H, W]."""
    idx = {n: i for i, n in enumerate(names)}
    area = labels[0].numel()
    skin = (labels == idx["skin"]).flatten(1).sum(1) >= 0.02 * area
    nose = (labels == idx["nose"]).flatten(1).sum(1) >= 2
    mouth = (labels == idx["mouth"]).flatten(1).sum(1) >= 2
    eyes = count_components(labels == idx["eye"]) >= 2
    return skin & nose & mouth & eyes


# --------------------------------------------------------------------------------------------
# probe

def probe_path(resolution: int) -> Path:
    return PROBE_DIR / f"quality_probe_{resolution}.safetensors"


def train_probe(resolution: int, n_train: int = 3000, steps: int = 1500, batch: int = 32,
                seed: int = 0) -> UNet:
    from ganseg.faces import render_faces, split_seeds
    from ganseg.labels import CLASS_NAMES

    torch.manual_seed(seed)
    seeds = split_seeds("train", n_train)
    imgs, labs = render_faces(seeds, resolution=resolution)
    x_all, y_all = from_uint8(imgs), torch.from_numpy(labs).long()
    net = UNet(UNetConfig(num_classes=len(CLASS_NAMES), width=16, depth=3))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in tqdm(range(steps), desc="train quality probe"):
        idx = torch.randint(0, n_train, (batch,))
        x, y = x_all[idx], y_all[idx]
        flip = torch.rand(batch) < 0.5  # left/right symmetric domain: flip both
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def save_probe(net: UNet, path: Path) -> None:
    from safetensors.torch import save

    write_atomic(path, save({k: v.contiguous() for k, v in net.state_dict().items()},
                            metadata={"config": json.dumps(net.cfg.to_dict())}))


def load_probe(path: Path) -> UNet:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        cfg = UNetConfig(**json.loads(f.metadata()["config"]))
        state = {k: f.get_tensor(k) for k in f.keys()}
    net = UNet(cfg)
    net.load_state_dict(state)
    return net.eval()


@torch.no_grad()
def probe_outputs(net: UNet, images: torch.Tensor, batch: int = 64) -> tuple[np.ndarray, torch.Tensor]:
    """(pooled features [N, D], predicted labels [N, H, W]) for float NCHW images in [-1, 1]."""
    feats, labels = [], []
    for i in range(0, len(images), batch):
        x = images[i: i + batch]
        enc = net.encode(x)
        feats.append(torch.cat([e.mean(dim=[2, 3]) for e in enc[-2:]], dim=1))
        labels.append(net(x).argmax(1))
    return torch.cat(feats).double().numpy(), torch.cat(labels)


def gan_quality(G, n: int = 2000, truncation_psi: float = 1.0, probe: UNet | None = None,
                batch: int = 32) -> dict:
    """Both figures for generator G against the procedural domain at G's resolution."""
    from ganseg.faces import render_faces, split_seeds
    from ganseg.labels import CLASS_NAMES
    from ganseg.latents import z_from_seeds

    res = G.resolution
    probe = probe or load_probe(probe_path(res))
    val = from_uint8(render_faces(split_seeds("val", n), resolution=res)[0])
    test = from_uint8(render_faces(split_seeds("test", n), resolution=res)[0])
    gen = []
    with torch.no_grad():
        for i in tqdm(range(0, n, batch), desc="generate"):
            z = z_from_seeds(list(range(i, min(i + batch, n))), G.z_dim)
            gen.append(G.synthesize(z=z, truncation_psi=truncation_psi, noise_mode="random").clamp(-1, 1))
    gen = torch.cat(gen)
    f_val, l_val = probe_outputs(probe, val)
    f_test, _ = probe_outputs(probe, test)
    f_gen, l_gen = probe_outputs(probe, gen)
    return {
        "n": n, "resolution": res, "truncation_psi": truncation_psi,
        "fd_generated_vs_rendered": frechet_distance(f_gen, f_val),
        "fd_rendered_vs_rendered": frechet_distance(f_test, f_val),
        "parts_found_generated": float(parts_found(l_gen, CLASS_NAMES).float().mean()),
        "parts_found_rendered": float(parts_found(l_val, CLASS_NAMES).float().mean()),
    }


# --------------------------------------------------------------------------------------------
# CLI: ganseg gan-quality

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_int

    p.add_argument("--ckpt", default=None, help="generator (default: bundled)")
    p.add_argument("--n", type=positive_int, default=2000, help="images per set")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--train-probe", action="store_true", help="(re)train the probe for this resolution")
    p.add_argument("--out", default=None, help="write the figures as JSON here")


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator

    G = load_generator(args.ckpt)
    path = probe_path(G.resolution)
    if args.train_probe or not path.is_file():
        save_probe(train_probe(G.resolution), path)
        print(f"trained probe: {path}")
    result = gan_quality(G, args.n, args.truncation, load_probe(path))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0
