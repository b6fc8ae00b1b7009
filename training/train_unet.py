"""UNet training on a synthesized dataset (auto-shot distillation) or on real labelled images.

The student sees GAN images during training and real photos at test time; the augmentations
below are there to bridge that gap (geometry, colour, optics, sensor noise, compression), all on
whole batches in torch, with the same geometric warp applied to images and targets (nearest for
labels; reflection padding, so every output pixel keeps a valid label).

Targets: the head's hard labels (cross entropy), or with --soft its stored top-k distribution,
renormalized over the k classes (soft cross entropy, i.e. KL up to a constant).

Every step draws its randomness from a generator seeded with (seed, step), and the learning rate
is a function of the step, so a run resumed from a checkpoint continues exactly as if it had never
stopped. Validation: mIoU on a held-out slice chosen by a hash of each image's seed (file number
for real data), so the split does not move when more shards are added.

Data parallel under torchrun (`torchrun --nproc-per-node N -m ganseg.cli train-unet ...`): the UNet
is wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPUs) with batch-norm statistics over the
global batch (`nn.SyncBatchNorm` on GPUs, `training.common.AllReduceBatchNorm2d` on CPUs); `--batch`
stays the global batch and each process computes its rows of it. Every process draws the step's
randomness (which images, every augmentation parameter, the sensor-noise field) for the whole global
batch from the same (seed, step) generator and keeps its rows, and the loss is normalized by the
global batch's weight, so N processes compute the step of one up to float rounding: the checkpoint
(rank 0 writes it, and validates) does not depend on N and a run resumes with another N.

Files in OUT::

    unet.safetensors   weights + JSON metadata (UNetConfig, class names, step, val mIoU): `load_unet`
    unet.json          the same facts plus the validation history, for people
    train_state.pt     weights + optimizer state + step (tensors and plain data only:
                       loaded with torch.load(weights_only=True)), for --resume
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ganseg.errors import BadInput, MissingFile
from ganseg.evaluate import confusion_matrix, mean_iou
from ganseg.headfit import class_weights  # one rule for the head's and the UNet's class weighting
from ganseg.images import write_atomic
from ganseg.training.common import (Dist, Share, agree, batch_share, ddp, read_on_main, stop_on_signal, sum_all,
                                    sync_batchnorm)
from ganseg.unet import UNet, UNetConfig, save_unet, segment_with_unet



@dataclass
class UNetTrainConfig:
    width: int = 32
    depth: int = 4
    steps: int = 5000                 # total steps; also the horizon of the cosine lr schedule
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    soft: bool = False                # soft targets from the stored top-k (synthesized data only)
    val_fraction: float = 0.05
    val_every: int = 500
    ckpt_every: int = 500
    max_uncertainty: float | None = None  # extra filter on a synthesized dataset
    augment: bool = True
    scale: tuple[float, float] = (0.8, 1.25)
    rotate_deg: float = 15.0
    translate: float = 0.1            # fraction of the image side
    flip_prob: float = 0.5
    jitter: float = 0.3               # brightness, contrast, saturation: factors in [1-j, 1+j]
    hue: float = 0.05                 # hue rotation, fraction of a full turn
    blur_prob: float = 0.3
    blur_sigma: float = 1.5           # largest blur sigma in pixels
    noise_prob: float = 0.3
    noise_std: float = 0.05           # largest noise std (images in [0, 1])
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    # per-class loss weights from the training labels' pixel shares: "sqrt-inverse" (1/sqrt(share),
    # normalized so that the average pixel weighs 1) or "none". Why: face parts of 1-2 px (eyebrow,
    # eye, ear) are ~1 % of the pixels; unweighted, a 1 000-step UNet never predicts them (oracle of
    # benchmarks/autoshot_eval.py: eyebrow/eye/nose/ear IoU 0.00, mIoU 0.453) and a 2 000-step one
    # only weakly (0.651); weighted, 1 000 steps give 0.677 with every part found.
    class_weighting: str = "sqrt-inverse"
    seed: int = 0

    def unet_config(self, num_classes: int) -> UNetConfig:
        return UNetConfig(num_classes=num_classes, width=self.width, depth=self.depth)


# --------------------------------------------------------------------------------------------
# data

@dataclass
class LabelledData:
    images: torch.Tensor              # uint8 [N, H, W, 3]
    labels: torch.Tensor              # uint8 [N, H, W]
    ids: np.ndarray                   # int64 [N]: seed or file number (drives the val split)
    class_names: list[str]
    topk_idx: torch.Tensor | None = None   # uint8 [N, k, H, W]
    topk_prob: torch.Tensor | None = None  # float16 [N, k, H, W]
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> "LabelledData":
        t = torch.from_numpy(np.asarray(idx, np.int64))
        return LabelledData(self.images[t], self.labels[t], self.ids[idx], self.class_names,
                            None if self.topk_idx is None else self.topk_idx[t],
                            None if self.topk_prob is None else self.topk_prob[t], self.source)


def synth_data(path: str | os.PathLike, max_uncertainty: float | None = None, soft: bool = False) -> LabelledData:
    from ganseg.synthesize import load_synth_dataset

    ds = load_synth_dataset(path, max_uncertainty=max_uncertainty, soft=soft)
    if soft and ds.topk_idx is None:
        raise BadInput(f"--soft: {path} has no soft labels (make it with `ganseg synthesize --soft-topk K`)")
    if len(ds) == 0:
        raise BadInput(f"{path}: no images ({ds.complete_shards}/{ds.num_shards} shards complete, "
                       f"max_uncertainty={max_uncertainty})")
    if ds.complete_shards < ds.num_shards:
        print(f"note: {path} has {ds.complete_shards}/{ds.num_shards} shards complete; training on those")
    return LabelledData(torch.from_numpy(ds.images), torch.from_numpy(ds.labels), ds.seeds, ds.class_names,
                        None if ds.topk_idx is None else torch.from_numpy(ds.topk_idx),
                        None if ds.topk_prob is None else torch.from_numpy(ds.topk_prob), str(path))


def real_data(path: str | os.PathLike) -> LabelledData:
    """`NNNN.png` + `NNNN_mask.png` pairs (as `ganseg render` writes); class names from labels.json."""
    from ganseg.labels import CLASS_NAMES, load_label_png, read_labels_json
    from ganseg.images import load_rgb

    root = Path(path)
    if not root.is_dir():
        raise MissingFile(f"real-image folder not found: {root}")
    pairs = []
    for p in sorted(root.iterdir()):
        m = re.fullmatch(r"(\d+)\.(png|jpg|jpeg)", p.name, re.IGNORECASE)
        if m:
            mask = root / f"{m.group(1)}_mask.png"
            if not mask.is_file():
                raise MissingFile(f"{mask}: label map for {p.name} is missing")
            pairs.append((int(m.group(1)), p, mask))
    if not pairs:
        raise MissingFile(f"{root}: no NNNN.png + NNNN_mask.png pairs")
    # the mask format's own reader: one set of labels.json checks and messages for every command
    names = list(read_labels_json(root).class_names) if (root / "labels.json").is_file() else list(CLASS_NAMES)
    images, labels = [], []
    for _, p, mp in tqdm(pairs, desc="load real", unit="img"):
        im, lab = load_rgb(p), load_label_png(mp)
        if lab.shape != im.shape[:2] or (images and im.shape != images[0].shape):
            raise BadInput(f"{p}: image {im.shape[:2]} / mask {lab.shape} differ from each other or from "
                           f"the first image {images[0].shape[:2] if images else ''}; all must match")
        if lab.max() >= len(names):
            raise BadInput(f"{mp}: label {lab.max()} but only {len(names)} classes ({names})")
        images.append(im), labels.append(lab)
    return LabelledData(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)),
                        np.array([i for i, _, _ in pairs], np.int64), names, source=str(root))


def _hash01(ids: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (id, salt) -> uniform [0, 1): a per-image coin that never depends on N."""
    x = ids.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def val_split(ids: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the validation images: about `fraction` of them, at least one (when N > 1)."""
    if not 0 <= fraction < 1:
        raise BadInput(f"val_fraction must be in [0, 1), got {fraction}")
    h = _hash01(ids, seed)
    val = h < fraction
    if fraction > 0 and len(ids) > 1:
        if not val.any():
            val[np.argmin(h)] = True
        if val.all():
            val[np.argmax(h)] = False
    return val


# --------------------------------------------------------------------------------------------
# augmentation (pure functions of tensors + a torch.Generator)

def _u(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def random_affine(n: int, cfg: UNetTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] output->input maps for affine_grid: zoom, rotation, translation, h-flip."""
    s = torch.exp(_u(gen, n, math.log(cfg.scale[0]), math.log(cfg.scale[1])))
    a = _u(gen, n, -1, 1) * math.radians(cfg.rotate_deg)
    t = _u(gen, 2 * n, -1, 1).reshape(n, 2) * cfg.translate * 2  # normalized coords span 2
    flip = torch.where(torch.rand(n, generator=gen) < cfg.flip_prob, -1.0, 1.0)
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = t
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_jitter(x: torch.Tensor, cfg: UNetTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (a rotation of the YIQ chroma plane); x in [0, 1]."""
    return _colour_jitter(x, *_colour_params(x.shape[0], cfg, gen))


def _colour_params(n: int, cfg: UNetTrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Brightness, contrast and saturation factors and the hue angle of n images."""
    j = cfg.jitter
    b, c, s = (_u(gen, n, 1 - j, 1 + j) for _ in range(3))
    return b, c, s, _u(gen, n, -1, 1) * cfg.hue * 2 * math.pi


def _colour_jitter(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor,
                   ang: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    b, c, s = (v.to(x.device)[:, None, None, None] for v in (b, c, s))
    x = x * b
    gray = (x * _YIQ[0].to(x.device)[None, :, None, None]).sum(1, keepdim=True)
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * c + gray.mean(dim=(2, 3), keepdim=True)
    gray = (x * _YIQ[0].to(x.device)[None, :, None, None]).sum(1, keepdim=True)
    x = gray + (x - gray) * s
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(ang), -torch.sin(ang)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(ang), torch.cos(ang)
    m = (torch.linalg.inv(_YIQ) @ rot @ _YIQ).to(x.device, x.dtype)  # [n, 3, 3] RGB -> RGB
    x = torch.einsum("nij,njhw->nihw", m, x)
    return x.clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Per-image separable Gaussian blur; sigma [N] in pixels (0 = untouched). The kernel radius is
    3 sigma of the largest sigma, or `radius` (the whole batch's, when x is some of its rows)."""
    n, c, h, w = x.shape
    r = radius if radius is not None else max(1, int(math.ceil(3 * float(sigma.max()))))
    r = min(r, h - 1, w - 1)
    d = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    sig = sigma.to(x.device, x.dtype)[:, None]
    k = torch.exp(-0.5 * (d[None] / sig.clamp_min(1e-3)) ** 2)
    k = torch.where(sig > 0, k, (d[None] == 0).to(x.dtype))  # sigma 0: a delta
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [n*c, 2r+1]
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, [r, r, 0, 0], mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, [0, 0, r, r], mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def jpeg_roundtrip(x: torch.Tensor, quality: list[int]) -> torch.Tensor:
    """JPEG-encode and decode each image (PIL) at its quality; x in [0, 1], [N, 3, H, W]."""
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for im, q in zip(arr, quality):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf) as dec:
            out.append(np.asarray(dec.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255


def augment(images: torch.Tensor, target: torch.Tensor, cfg: UNetTrainConfig,
            gen: torch.Generator, share: Share | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """images [N,3,H,W] in [0,1] and a target [N,C,H,W] (labels as float, or class probabilities).

    Returns both warped by the same affine (bilinear for the image, nearest for the target), and the
    image alone through colour jitter, blur, noise and JPEG on random subsets of the batch.

    Every parameter is drawn first, for the whole batch, in a fixed order; with `share` the images are
    some rows of a larger batch and get those rows' parameters (the numbers one process would draw).
    """
    share = share or Share(images.shape[0])
    n, take = share.total, share.take
    theta = random_affine(n, cfg, gen)
    colour = _colour_params(n, cfg, gen)
    sigma = torch.where(torch.rand(n, generator=gen) < cfg.blur_prob, _u(gen, n, 0.3, cfg.blur_sigma), 0.0)
    std = torch.where(torch.rand(n, generator=gen) < cfg.noise_prob, _u(gen, n, 0, cfg.noise_std), 0.0)
    noise = torch.randn((n, *images.shape[1:]), generator=gen)
    use_jpeg = torch.rand(n, generator=gen) < cfg.jpeg_prob
    quality = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (n,), generator=gen)
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))  # the whole batch's kernel

    theta, sigma, std, noise, use_jpeg, quality = map(take, (theta, sigma, std, noise, use_jpeg, quality))
    images, target = warp(images, theta, "bilinear"), warp(target, theta, "nearest")
    images = _colour_jitter(images, *map(take, colour))
    if (sigma > 0).any():
        images = gaussian_blur(images, sigma, radius)
    images = (images + noise.to(images.device) * std.to(images.device)[:, None, None, None]).clamp(0, 1)
    if use_jpeg.any():
        sel = use_jpeg.nonzero().flatten()
        images = images.clone()
        images[sel.to(images.device)] = jpeg_roundtrip(images[sel.to(images.device)], quality[sel].tolist())
    return images, target


def soft_targets(idx: torch.Tensor, prob: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k (indices uint8, probs fp16) [N,k,H,W] -> dense distribution [N,K,H,W], renormalized."""
    q = torch.zeros(idx.shape[0], num_classes, *idx.shape[2:], device=idx.device)
    q.scatter_(1, idx.long(), prob.float())
    return q / q.sum(1, keepdim=True).clamp_min(1e-6)


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# training

class UNetTrainer:
    def __init__(self, cfg: UNetTrainConfig, data: LabelledData, out: str | os.PathLike, device: str = "cpu",
                 dist: Dist | None = None):
        if cfg.soft and data.topk_idx is None:
            raise BadInput("soft targets need a synthesized dataset with --soft-topk")
        if cfg.batch < 1 or cfg.steps < 1:
            raise BadInput(f"batch and steps must be >= 1, got {cfg.batch} and {cfg.steps}")
        if cfg.class_weighting not in ("sqrt-inverse", "none"):
            raise BadInput(f"class_weighting must be 'sqrt-inverse' or 'none', got {cfg.class_weighting!r}")
        self.cfg, self.out, self.device = cfg, Path(out), torch.device(device)
        self.dist = d = dist or Dist()
        if cfg.batch % d.world:
            from ganseg.training.common import check_batch

            check_batch(cfg.batch, d.world)
        self.share = batch_share(cfg.batch, d.world, d.rank)
        val = val_split(data.ids, cfg.val_fraction, cfg.seed)
        self.train_data, self.val_data = data.subset(np.flatnonzero(~val)), data.subset(np.flatnonzero(val))
        self.class_names = data.class_names
        torch.manual_seed(cfg.seed)
        # NHWC weights and inputs: ~20 % faster steps with oneDNN on CPU, and cuDNN's preferred layout
        self.unet = UNet(cfg.unet_config(len(data.class_names))).to(self.device, memory_format=torch.channels_last)
        if d.active:  # batch-norm statistics of the global batch, gradients averaged by DDP
            sync_batchnorm(self.unet, self.device)
        self.net = ddp(self.unet, self.device) if d.active else self.unet  # what the step calls
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.history: list[dict] = []
        self.source = data.source
        self.amp = self.device.type == "cuda"
        self.class_weight = class_weights(self.train_data.labels, len(self.class_names), cfg.class_weighting,
                                          self.device)

    @property
    def state_path(self) -> Path:
        return self.out / "train_state.pt"

    def lr_at(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(self.cfg.warmup, 1))
        return self.cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step / self.cfg.steps, 1.0)))

    def save(self) -> None:
        """Rank 0 writes (atomically); the other ranks hold the same weights and write nothing."""
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_json = json.dumps(asdict(self.cfg))
        state = {"model": self.unet.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                 "config": cfg_json, "history": json.dumps(self.history)}
        # the resume state first: if killed before the export below, --resume still has a consistent step
        buf = io.BytesIO()
        torch.save(state, buf)
        write_atomic(self.state_path, buf.getvalue())
        last = self.history[-1]["val_miou"] if self.history else None
        info = {"step": self.step, "val_miou": last, "train_config": asdict(self.cfg), "data": self.source,
                "resolution": int(self.train_data.images.shape[1])}  # what `ganseg segment` resizes to
        save_unet(self.unet, self.out / "unet.safetensors", self.class_names, info)
        doc = {"unet_config": self.unet.cfg.to_dict(), "class_names": self.class_names, **info,
               "val_images": len(self.val_data), "train_images": len(self.train_data), "history": self.history}
        write_atomic(self.out / "unet.json", (json.dumps(doc, indent=1) + "\n").encode())

    def load(self, path: Path | None = None) -> None:
        path = Path(path or self.state_path)
        blob = read_on_main(self.dist, path)  # under torchrun rank 0 reads, every rank gets the bytes
        if blob is None:
            raise MissingFile(f"--resume: no training state at {path}")
        try:
            state = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=True)
            saved = json.loads(state["config"])
        except Exception as exc:
            raise BadInput(f"{path}: unreadable training state ({exc})") from None
        arch = ("width", "depth")
        if any(saved[k] != getattr(self.cfg, k) for k in arch) or \
                state["model"]["head.weight"].shape[0] != len(self.class_names):
            raise BadInput(f"{path}: checkpoint UNet (width {saved['width']}, depth {saved['depth']}, "
                           f"{state['model']['head.weight'].shape[0]} classes) differs from the requested one "
                           f"(width {self.cfg.width}, depth {self.cfg.depth}, {len(self.class_names)} classes)")
        self.unet.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [-1, 1], target) of one step: labels long [N,H,W] or probabilities [N,K,H,W]; under
        torchrun this process's rows of the global batch (the draws are the global batch's)."""
        cfg, d = self.cfg, self.train_data
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = self.share.take(torch.randint(0, len(d), (cfg.batch,), generator=gen))
        x = d.images[idx].to(self.device).permute(0, 3, 1, 2).float() / 255
        if cfg.soft:
            target = soft_targets(d.topk_idx[idx].to(self.device), d.topk_prob[idx].to(self.device),
                                  len(self.class_names))
        else:
            target = d.labels[idx].to(self.device)[:, None].float()
        if cfg.augment:
            x, target = augment(x, target, cfg, gen, self.share)
        if not cfg.soft:
            target = target[:, 0].round().long()
        return (x * 2 - 1).contiguous(memory_format=torch.channels_last), target

    def train_step(self) -> float:
        """One step; returns the global batch's loss."""
        x, target = self.batch_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        self.unet.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.net(x)
        logits = logits.float()
        if self.dist.active:
            return self._distributed_step(logits, target)
        if self.cfg.soft:
            w = 1.0 if self.class_weight is None else self.class_weight[None, :, None, None]
            loss = -(w * target * logits.log_softmax(1)).sum(1).mean()
        else:
            loss = F.cross_entropy(logits, target, weight=self.class_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        return loss.item()

    def _distributed_step(self, logits: torch.Tensor, target: torch.Tensor) -> float:
        """The one-process loss, split over the ranks: each contributes (sum of its pixels' weighted
        losses) / (the global batch's total weight), so the contributions add up to the global loss
        (a class-weighted mean weighs the pixels of the whole batch, not of each rank's half). DDP
        averages gradients, hence the backward of world x contribution."""
        if self.cfg.soft:
            w = 1.0 if self.class_weight is None else self.class_weight[None, :, None, None]
            num = -(w * target * logits.log_softmax(1)).sum()
            den = torch.tensor(float(target[:, 0].numel()), device=logits.device)
        else:
            num = F.cross_entropy(logits, target, weight=self.class_weight, reduction="sum")
            den = (self.class_weight[target].sum() if self.class_weight is not None
                   else torch.tensor(float(target.numel()), device=logits.device))
        part = num / sum_all(self.dist, den.float())
        self.opt.zero_grad(set_to_none=True)
        (part * self.dist.world).backward()
        self.opt.step()
        self.step += 1
        return float(sum_all(self.dist, part.detach()))

    @torch.no_grad()
    def validate(self, batch: int = 32) -> float | None:
        """mIoU of the UNet on the held-out slice (against its stored hard labels)."""
        if len(self.val_data) == 0:
            return None
        k = len(self.class_names)
        conf = torch.zeros(k, k, dtype=torch.long)
        pred = segment_with_unet(self.unet, self.val_data.images.numpy(), batch)
        conf += confusion_matrix(torch.from_numpy(pred), self.val_data.labels, k)
        return mean_iou(conf)

    def train(self, stop_at: int | None = None, progress: bool = True) -> None:
        """Train to `stop_at` (default cfg.steps) total steps; checkpoints every ckpt_every and at the end.

        SIGTERM/SIGINT (a job scheduler, Ctrl-C) finish the current step and checkpoint.
        """
        stop_at = self.cfg.steps if stop_at is None else stop_at
        main = self.dist.main
        stopping = False
        with stop_on_signal() as stop:
            with tqdm(total=stop_at, initial=self.step, desc="train-unet", unit="step",
                      disable=not (progress and main)) as bar:
                while self.step < stop_at and not stopping:
                    loss = self.train_step()
                    bar.update(1)
                    # every rank stops after the same step (a signal may reach them at different steps)
                    stopping = agree(self.dist, bool(stop["signal"]))
                    end = self.step == stop_at or stopping
                    if not main:  # rank 0 validates, keeps the history and writes the checkpoints
                        continue
                    if self.step % self.cfg.val_every == 0 or end:
                        miou = self.validate()
                        self.history.append({"step": self.step, "loss": round(loss, 5),
                                             "val_miou": None if miou is None else round(miou, 5)})
                        bar.set_postfix(loss=f"{loss:.3f}", val_miou="-" if miou is None else f"{miou:.3f}")
                    elif self.step % 10 == 0:
                        bar.set_postfix(loss=f"{loss:.3f}")
                    if self.step % self.cfg.ckpt_every == 0 or end:
                        self.save()


# --------------------------------------------------------------------------------------------
# CLI: ganseg train-unet

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import nonnegative_float, nonnegative_int, positive_float, positive_int

    d = UNetTrainConfig()
    p.add_argument("--data", default=None, help="synthesized dataset folder (`ganseg synthesize --out`)")
    p.add_argument("--real", default=None, help="or: folder of real NNNN.png + NNNN_mask.png pairs")
    p.add_argument("--out", required=True, help="run folder: unet.safetensors, unet.json, train_state.pt")
    p.add_argument("--width", type=positive_int, default=d.width)
    p.add_argument("--depth", type=positive_int, default=d.depth)
    p.add_argument("--steps", type=positive_int, default=d.steps, help="total steps (resume continues the count)")
    p.add_argument("--batch", type=positive_int, default=d.batch)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--soft", action="store_true", help="soft targets from the stored top-k probabilities")
    p.add_argument("--val-fraction", type=nonnegative_float, default=d.val_fraction)
    p.add_argument("--val-every", type=positive_int, default=d.val_every)
    p.add_argument("--ckpt-every", type=positive_int, default=d.ckpt_every)
    p.add_argument("--max-uncertainty", type=nonnegative_float, default=None,
                   help="stricter filter on a synthesized set")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--class-weighting", choices=["sqrt-inverse", "none"], default=d.class_weighting,
                   help="per-class loss weights from the labels' pixel shares (default: 1/sqrt(share), so 1-2 px "
                        "parts are learned; none: plain cross-entropy)")
    p.add_argument("--seed", type=nonnegative_int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    """`ganseg train-unet`, in one process or as one of torchrun's N (data parallel, see the module doc)."""
    from ganseg.paths import check_out_dir
    from ganseg.training.common import check_batch, env_world, process_device, setup, shutdown

    rank, world, local = env_world()
    check_out_dir(args.out)  # before any data is read or a step is trained
    if args.batch % world:  # one line from rank 0, before any work; the other ranks leave quietly
        if rank:
            raise SystemExit(2)
        check_batch(args.batch, world)
    device = process_device(args.device, local, world)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.data is None) == (args.real is None):
        raise BadInput("give exactly one of --data (synthesized dataset) or --real (labelled images)")
    if args.real and args.soft:
        raise BadInput("--soft needs a synthesized dataset (--data) made with --soft-topk")
    cfg = UNetTrainConfig(width=args.width, depth=args.depth, steps=args.steps, batch=args.batch, lr=args.lr,
                          soft=args.soft, val_fraction=args.val_fraction, val_every=args.val_every,
                          ckpt_every=args.ckpt_every, max_uncertainty=args.max_uncertainty,
                          augment=not args.no_augment, class_weighting=args.class_weighting, seed=args.seed)
    data = (synth_data(args.data, cfg.max_uncertainty, cfg.soft) if args.data else real_data(args.real))
    dist = setup(torch.device(device), rank, world, local)
    try:
        trainer = UNetTrainer(cfg, data, args.out, device, dist)
        say = print if dist.main else (lambda *a, **k: None)
        if dist.active:
            say(f"data parallel: {dist.world} processes ({dist.backend}), global batch {cfg.batch}, "
                f"{trainer.share.size} per process, batch-norm statistics over the global batch")
        if args.resume:
            trainer.load()
            say(f"resumed at step {trainer.step}")
        say(f"{len(trainer.train_data)} training / {len(trainer.val_data)} validation images from {data.source}")
        trainer.train()
        last = trainer.history[-1]["val_miou"] if trainer.history else None
        say(f"step {trainer.step}, val mIoU {last if last is not None else '-'}; weights: "
            f"{trainer.out / 'unet.safetensors'}")
    except BaseException:
        shutdown(dist, wait=False)
        raise
    shutdown(dist)
    return 0
