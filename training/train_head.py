"""Few-shot head training: cross-entropy on generator features of 1-10 annotated images.

Annotation workflow (see README "Annotating"):
1. `ganseg sample --seeds 0-4 --out shots/` writes seedNNNN.png and latents.safetensors (z, w+).
2. The user paints a part mask per image: `seedNNNN_mask.png`, an indexed PNG whose pixel values
   are class indices (palette free), plus `labels.json` {"classes": [...]} naming the classes.
3. `ganseg train-head --shots shots/ --head cnn --out head.safetensors`.
Labelled *real* images (`NNNN.png` + `NNNN_mask.png`, as `ganseg render` writes) are inverted into
the GAN first (`--real`), and the head is trained on their inverted latents' features.

Features are computed once per shot without gradients (the generator is frozen), so a step costs
only the head; the first layer runs through the fused op and never builds the channel stack.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganseg.errors import BadInput
from ganseg.heads import HeadEnsemble, SegmentationHead, head_for, head_steps_for, save_head
from ganseg.shots import Shots, load_sampled_shots, shot_features, shots_from_real


@dataclass
class HeadTrainConfig:
    kind: str = "cnn"
    steps: int = 0           # 0: scaled with the shots, each seen ~400 times (`ganseg.heads.head_steps_for`)
    lr: float = 1e-3
    batch: int = 2           # shots per step (all of them when fewer)
    ensemble: int = 1        # N heads with different seeds -> HeadEnsemble
    min_resolution: int = 4  # use conv layers from this resolution up (ReGAN: 8)
    seed: int = 0
    class_weighting: str = "none"  # or "sqrt-inverse": loss weights 1/sqrt(pixel share of the shots' masks)

    def validate(self, G=None) -> None:
        """Refuse settings that would "succeed" and break `segment`/`synthesize` later, before training."""
        if self.kind not in ("linear", "mlp", "cnn"):
            raise BadInput(f"head kind must be 'linear', 'mlp' or 'cnn', got {self.kind!r}")
        for name, v in (("steps", self.steps), ("ensemble", self.ensemble), ("batch", self.batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise BadInput(f"--{name} must be an integer >= {0 if name == 'steps' else 1}, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise BadInput(f"--lr must be a number > 0, got {self.lr!r}")
        if G is not None:
            res = sorted({r for _, r, _ in G.feature_info})
            if self.min_resolution not in res:
                raise BadInput(f"--min-resolution {self.min_resolution}: this generator's layers have resolutions "
                               f"{', '.join(map(str, res))}; pass one of those (ReGAN uses 8)")


def layer_scales(feats: list[torch.Tensor]) -> list[float]:
    """1/std per layer: activation scales differ a lot between layers; equalize them."""
    return [float(1.0 / (f.std() + 1e-6)) for f in feats]


def check_shots(G, shots: Shots) -> None:
    """Shots made with another generator would fail deep inside torch: say so first."""
    if shots.ws.ndim != 3 or tuple(shots.ws.shape[1:]) != (G.num_ws, G.w_dim):
        raise BadInput(f"the shots' latents are {list(shots.ws.shape[1:])} per image, this generator takes "
                       f"[{G.num_ws}, {G.w_dim}]: were they sampled with another --ckpt? Pass that one")
    if len(shots.masks) != len(shots.ws):
        raise BadInput(f"{len(shots.masks)} masks for {len(shots.ws)} latents")


def train_head(G, shots: Shots, cfg: HeadTrainConfig, progress: bool = True) -> SegmentationHead | HeadEnsemble:
    cfg.validate(G)
    check_shots(G, shots)
    feats = shot_features(G, shots)
    size = shots.masks.shape[-1]
    steps = cfg.steps or head_steps_for(len(shots.ws), cfg.batch)
    heads = []
    for k in range(cfg.ensemble):
        torch.manual_seed(cfg.seed + k)
        head = head_for(G, cfg.kind, len(shots.class_names), size=size, min_resolution=cfg.min_resolution,
                        feature_scales=[])
        used = head.cfg.feature_layers
        head.cfg.feature_scales = layer_scales([feats[i] for i in used])
        head.project.scales.copy_(torch.tensor(head.cfg.feature_scales))
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        weight = None
        if cfg.class_weighting == "sqrt-inverse":
            from ganseg.training.train_unet import class_weights

            weight = class_weights(shots.masks, len(shots.class_names), "sqrt-inverse")
        n = len(shots.ws)
        bar = tqdm(range(steps), desc=f"train {cfg.kind} head {k + 1}/{cfg.ensemble}", disable=not progress)
        for step in bar:
            idx = torch.randperm(n)[: min(cfg.batch, n)]
            logits = head([f[idx] for f in feats])
            loss = F.cross_entropy(logits, shots.masks[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        heads.append(head.eval())
    return heads[0] if cfg.ensemble == 1 else HeadEnsemble(heads).eval()


# --------------------------------------------------------------------------------------------
# CLI: ganseg train-head

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_float, positive_int

    d = HeadTrainConfig()
    p.add_argument("--ckpt", default=None, help="generator (default: bundled)")
    p.add_argument("--shots", required=True, help="folder: `ganseg sample` output + seedNNNN_mask.png + labels.json")
    p.add_argument("--real", action="store_true",
                   help="shots are labelled real images (NNNN.png + NNNN_mask.png): invert them first")
    p.add_argument("--head", choices=["linear", "mlp", "cnn"], default=d.kind)
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps per head (default: scaled with the shots so each is seen ~400 times: "
                        "2 000 for 10 shots at batch 2, at least 500)")
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--ensemble", type=positive_int, default=d.ensemble,
                   help="train N heads (different seeds) -> an ensemble with per-pixel uncertainty")
    p.add_argument("--min-resolution", type=positive_int, default=d.min_resolution,
                   help="use generator layers from this resolution up (a power of two up to the generator's)")
    p.add_argument("--invert-steps", type=positive_int, default=300, help="with --real: inversion steps per shot")
    p.add_argument("--include-proposed", action="store_true",
                   help="also train on the unreviewed proposals `ganseg annotate` saved (seedNNNN_proposed.png); "
                        "by default only reviewed masks (seedNNNN_mask.png) are used")
    p.add_argument("--out", required=True, help="head file (.safetensors)")


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator
    from ganseg.paths import check_out_file

    # Everything that can be wrong is checked before the (slow) inversion and training.
    check_out_file(args.out)
    cfg = HeadTrainConfig(kind=args.head, steps=args.steps or 0, lr=args.lr, ensemble=args.ensemble,
                          min_resolution=args.min_resolution)
    cfg.validate()
    G = load_generator(args.ckpt)
    cfg.validate(G)
    if args.real:
        from ganseg.invert import InvertConfig, default_discriminator_for, load_discriminator

        # shots_from_real reads labels.json, every image and mask (sizes checked) before inverting
        D = load_discriminator(default_discriminator_for(args.ckpt))
        shots = shots_from_real(G, args.shots, InvertConfig(steps=args.invert_steps), D)
    else:
        # says how many reviewed masks (and proposals) it uses; masks without a latent are an error
        shots = load_sampled_shots(args.shots, G.resolution, include_proposed=args.include_proposed, note=print)
        check_shots(G, shots)
    head = train_head(G, shots, cfg)
    save_head(head, args.out, extra={"class_names": shots.class_names, "generator": str(args.ckpt or "default")})
    print(f"trained a {args.head} head on {len(shots.ws)} shot(s): {args.out}")
    return 0
