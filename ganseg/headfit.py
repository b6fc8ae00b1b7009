"""Fitting a few-shot head: cross-entropy on generator features of 1-10 annotated shots.

Why in the core: three rooms fit heads. `ganseg train-head` (training/train_head.py, the command),
the painter's Propose (`ganseg annotate`, ganseg/annotate/propose.py) and the protocol
(`ganseg eval`, benchmarks/autoshot_eval.py) all call `train_head` here, so a proposal in the
painter is the head `train-head` would have trained on the same masks, and the painter does not
import the training room.

Features are computed once per shot without gradients (the generator is frozen), so a step costs
only the head; the first layer runs through the fused op and never builds the channel stack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganseg.errors import BadInput
from ganseg.heads import HeadEnsemble, SegmentationHead, head_for, head_steps_for
from ganseg.shots import Shots, shot_features

__all__ = ["HeadTrainConfig", "train_head", "check_shots", "layer_scales", "class_weights"]


@dataclass
class HeadTrainConfig:
    kind: str = "mlp"        # generalizes beyond its shots best: vs the annotator on held-out generated
                             # images MLP 0.56 / 0.59 at 5 / 10 shots, CNN 0.45 / 0.53 (docs/autoshot.md)
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
        if self.class_weighting not in ("none", "sqrt-inverse"):
            raise BadInput(f"class_weighting must be 'none' or 'sqrt-inverse', got {self.class_weighting!r}")
        if G is not None:
            res = sorted({r for _, r, _ in G.feature_info})
            if self.min_resolution not in res:
                raise BadInput(f"--min-resolution {self.min_resolution}: this generator's layers have resolutions "
                               f"{', '.join(map(str, res))}; pass one of those (ReGAN uses 8)")


def layer_scales(feats: list[torch.Tensor]) -> list[float]:
    """1/std per layer: activation scales differ a lot between layers; equalize them."""
    return [float(1.0 / (f.std() + 1e-6)) for f in feats]


def class_weights(labels: torch.Tensor, num_classes: int, how: str, device=None) -> torch.Tensor | None:
    """Per-class loss weights 1/sqrt(pixel share), normalized to a pixel-weighted mean of 1 (so the loss
    scale and the learning rate keep their meaning); classes absent from the labels get weight 0.

    One rule for both learners that take `class_weighting`: a head on its shots (here) and the UNet
    on its dataset (`ganseg train-unet`)."""
    if how == "none" or len(labels) == 0:
        return None
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    share = counts / counts.sum()
    w = torch.where(share > 0, share.clamp_min(1e-12).rsqrt(), torch.zeros_like(share))
    w = w / (w * share).sum()
    return w.float().to(device)


def check_shots(G, shots: Shots) -> None:
    """Shots made with another generator would fail deep inside torch: say so first."""
    if shots.ws.ndim != 3 or tuple(shots.ws.shape[1:]) != (G.num_ws, G.w_dim):
        raise BadInput(f"the shots' latents are {list(shots.ws.shape[1:])} per image, this generator takes "
                       f"[{G.num_ws}, {G.w_dim}]: were they sampled with another --ckpt? Pass that one")
    if len(shots.masks) != len(shots.ws):
        raise BadInput(f"{len(shots.masks)} masks for {len(shots.ws)} latents")


def train_head(G, shots: Shots, cfg: HeadTrainConfig, progress: bool = True) -> SegmentationHead | HeadEnsemble:
    """A head (or `cfg.ensemble` heads, seeds seed..seed+N-1) fitted to the shots; eval mode."""
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
        weight = class_weights(shots.masks, len(shots.class_names), cfg.class_weighting)
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
