"""StyleGAN2 training: non-saturating loss, lazy R1, EMA generator, style mixing, optional
DiffAugment, bf16 autocast where the hardware has bf16 (CUDA; CPUs with AVX512-BF16/AMX, where
it measured 1.5x the fp32 step). Same code on CPU and CUDA; resumable bit-for-bit.

Every step draws its randomness from `torch.manual_seed(seed * 1_000_003 + step)` (the factor keeps
the streams of runs with neighbouring seeds apart), so a run resumed from a checkpoint continues
exactly as if it had never stopped (no RNG state to carry around).

Data parallel under torchrun (`torchrun --nproc-per-node N -m ganseg.cli train-gan ...`): G and D
are wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPUs), `--batch` stays the global batch
and each process computes its rows of it (`training.common.batch_share`, whole minibatch-stddev groups
per process). Every process draws the step's randomness for the whole global batch (images, latents,
mixing cuts, noise maps, DiffAugment) and keeps its rows, so N processes compute the step of one, up
to float rounding: the checkpoint (rank 0 writes it) does not depend on N and a run resumes with
another N. DDP wraps G's forward as one module call (`GeneratorStep`) and D for the D step only (the
G step runs through the plain, frozen D); the lazy-R1 steps add a third D forward before the one
backward, which DDP handles since every D parameter gets a gradient in every D step. w_avg and the
EMA generator are updated identically on every rank from the same synchronized weights and the same
latents (no broadcast needed).
A run may also warm-start from a shipped generator + discriminator (`--init G D`, e.g. the bundled
default): their weights, a fresh optimizer, and the step count from zero.
Path-length regularization is left out: it mostly improves latent-space smoothness, which the
segmentation pipeline does not need, and costs ~30% per step.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganseg.checkpoints import save_generator
from ganseg.training.common import Dist, Share, agree, barrier, batch_share, ddp, read_on_main, stop_on_signal, sum_all
from ganseg.images import from_uint8, make_grid, save_png, to_uint8, write_atomic
from ganseg.stylegan2 import Discriminator, Generator, GeneratorConfig


@dataclass
class TrainGANConfig:
    resolution: int = 64
    channels: list[int] = field(default_factory=lambda: [256, 256, 256, 128, 64])
    z_dim: int = 256
    w_dim: int = 256
    mapping_layers: int = 4
    batch: int = 16
    lr: float = 0.0025
    r1_gamma: float | None = None   # None = NVlabs heuristic 0.0002 * res^2 / batch
    r1_every: int = 16
    ema_kimg: float | None = None   # None = batch * 10 / 32 (NVlabs)
    mixing_prob: float = 0.9
    augment: str = "diffaug"        # "diffaug" (color, translation, cutout) or "none"
    precision: str = "auto"         # "auto" (bf16 autocast where the device has bf16), "bf16", "fp32"
    n_images: int = 20000           # size of the rendered training set (procedural domain)
    data: str | None = None         # folder of images instead of the procedural domain
    seed: int = 0
    init: list[str] = field(default_factory=list)  # [G, D] files this run warm-started from (a record)

    def gen_config(self) -> GeneratorConfig:
        return GeneratorConfig(resolution=self.resolution, z_dim=self.z_dim, w_dim=self.w_dim,
                               mapping_layers=self.mapping_layers, channels=list(self.channels))


# --------------------------------------------------------------------------------------------
# data

def load_training_images(cfg: TrainGANConfig, cache: Path | None = None) -> torch.Tensor:
    """uint8 [N, H, W, 3]: the procedural train split (rendered once, cached) or a folder."""
    if cfg.data:
        from ganseg.images import load_rgb

        files = sorted(p for p in Path(cfg.data).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
                       and not p.stem.endswith("_mask"))
        if not files:
            from ganseg.errors import MissingFile

            raise MissingFile(f"--data {cfg.data}: no .png/.jpg images in it; pass a folder of training images")
        return torch.from_numpy(np.stack([load_rgb(f, cfg.resolution) for f in tqdm(files, desc="load")]))
    if cache is not None and cache.is_file():
        arr = np.load(cache)
        if arr.shape == (cfg.n_images, cfg.resolution, cfg.resolution, 3):
            return torch.from_numpy(arr)
    from ganseg.faces import render_faces, split_seeds

    seeds = split_seeds("train", cfg.n_images)
    chunks = []
    for i in tqdm(range(0, len(seeds), 256), desc="render train set", unit="x256"):
        chunks.append(render_faces(seeds[i: i + 256], resolution=max(cfg.resolution, 64))[0])
    images = np.concatenate(chunks)
    if images.shape[1] != cfg.resolution:  # the renderer starts at 64²; area-downsample below that
        t = F.avg_pool2d(torch.from_numpy(images).permute(0, 3, 1, 2).float(), images.shape[1] // cfg.resolution)
        images = t.round().byte().permute(0, 2, 3, 1).numpy()
    if cache is not None:
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, images)
        os.replace(tmp, cache)
    return torch.from_numpy(images)


# --------------------------------------------------------------------------------------------
# DiffAugment (Zhao et al. 2020, mit-han-lab/data-efficient-gans): applied to real and fake alike

def diff_augment(x: torch.Tensor, share: Share | None = None) -> torch.Tensor:
    """Colour, translation and cutout as the original: arithmetic, a padded gather and a mask.

    Why not `F.grid_sample`: the lazy R1 term differentiates twice through this function, and CUDA
    has no double backward for grid_sample (pytorch#34704; training died at step 0 on an H200).
    Indexing and multiplication are differentiable to any order on every device.

    With `share`, x holds some rows of a larger batch: the random draws are made for the whole batch
    (the same numbers one process draws) and x gets its rows' (data-parallel equivalence).
    """
    share = share or Share(x.shape[0])
    n, (_, _, h, w) = share.total, x.shape
    dev, dtype = x.device, x.dtype
    take = share.take
    # colour: brightness, saturation, contrast
    x = x + (take(torch.rand(n, 1, 1, 1, device=dev, dtype=dtype)) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (take(torch.rand(n, 1, 1, 1, device=dev, dtype=dtype)) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - mean) * (take(torch.rand(n, 1, 1, 1, device=dev, dtype=dtype)) + 0.5) + mean
    # translation by up to 1/8 of the image: gather from a 1-pixel zero border; indices clamped to
    # the border read zeros, so everything shifted in from outside is black
    sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    ty = take(torch.randint(-sy, sy + 1, (n, 1, 1), device=dev))
    tx = take(torch.randint(-sx, sx + 1, (n, 1, 1), device=dev))
    yy = (torch.arange(h, device=dev)[None, :, None] + ty + 1).clamp(0, h + 1)
    xx = (torch.arange(w, device=dev)[None, None, :] + tx + 1).clamp(0, w + 1)
    bb = torch.arange(x.shape[0], device=dev)[:, None, None]
    x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[bb, yy, xx].permute(0, 3, 1, 2)
    # cutout: one zeroed square of half the image size per image, centre anywhere (as the original)
    ch, cw = h // 2, w // 2
    cy = take(torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=dev)) - ch // 2
    cx = take(torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=dev)) - cw // 2
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    mask = ~((ys >= cy) & (ys < cy + ch) & (xs >= cx) & (xs < cx + cw))
    return x * mask[:, None].to(dtype)


# --------------------------------------------------------------------------------------------
# training

def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for the G and D passes (R1 stays fp32): on CUDA, and on a CPU whose oneDNN has
    native bf16 (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class GeneratorStep(torch.nn.Module):
    """G's forward for one training batch (mapping, style mixing, synthesis) as one module call:
    what DistributedDataParallel hooks (it sees `forward`, not `G.mapping` / `G.synthesis`)."""

    def __init__(self, G: Generator):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, z2: torch.Tensor | None, cut: torch.Tensor | None,
                noise: list[torch.Tensor]) -> torch.Tensor:
        G = self.G
        ws = G.mapping(z)[:, None].repeat(1, G.num_ws, 1)
        if z2 is not None:
            ws2 = G.mapping(z2)
            mix = torch.arange(G.num_ws, device=z.device)[None] >= cut  # [n, num_ws]
            ws = torch.where(mix[:, :, None], ws2[:, None], ws)
        return G.synthesis(ws, noise=noise)[0]


class GANTrainer:
    def __init__(self, cfg: TrainGANConfig, out: Path, device: str = "cpu", dist: Dist | None = None):
        self.cfg, self.out, self.device = cfg, out, torch.device(device)
        self.dist = dist or Dist()
        torch.manual_seed(cfg.seed)
        gcfg = cfg.gen_config()
        self.G = Generator(gcfg).to(self.device)
        self.D = Discriminator(cfg.resolution, cfg.channels).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        # lazy R1: D's Adam hyper-parameters are corrected for the skipped steps (NVlabs)
        c = cfg.r1_every / (cfg.r1_every + 1)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * c, betas=(0.0, 0.99**c), eps=1e-8)
        self.step = 0
        self.images_seen = 0
        self.wall_seconds = 0.0
        self.r1_gamma = cfg.r1_gamma if cfg.r1_gamma is not None else 0.0002 * cfg.resolution**2 / cfg.batch
        ema_kimg = cfg.ema_kimg if cfg.ema_kimg is not None else cfg.batch * 10 / 32
        self.ema_beta = 0.5 ** (cfg.batch / max(ema_kimg * 1000, 1e-8))
        self.amp = use_bf16(cfg.precision, self.device)
        if self.amp:  # NHWC is oneDNN's and the tensor cores' bf16 layout (+5 % per CPU step, measured)
            for net in (self.G, self.D, self.G_ema):
                net.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its kernels
        self.fixed_z = torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(123)).to(self.device)
        # this process's rows of every global batch; the minibatch-stddev groups stay whole when they can
        d = self.dist
        self.share = batch_share(cfg.batch, d.world, d.rank, mbstd_group(self.D, cfg.batch))
        self.equivalent = mbstd_group(self.D, cfg.batch) == mbstd_group(self.D, self.share.size)
        self.G_step = GeneratorStep(self.G)
        self.G_train, self.D_train = (ddp(self.G_step, self.device), ddp(self.D, self.device)) if d.active \
            else (self.G_step, self.D)

    # ---- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self) -> None:
        """Rank 0 writes (atomically); the other ranks hold the same weights and write nothing."""
        if not self.dist.main:
            return
        state = {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                 "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(), "step": self.step,
                 "images_seen": self.images_seen, "wall_seconds": self.wall_seconds,
                 "config": json.dumps(asdict(self.cfg))}
        buf = io.BytesIO()
        torch.save(state, buf)
        write_atomic(self.ckpt_path, buf.getvalue())
        save_generator(self.G_ema, self.out / "generator.safetensors",
                       extra_metadata={"step": str(self.step), "images_seen": str(self.images_seen)})

    def load(self, path: Path) -> None:
        """Continue from a checkpoint (of any number of processes: it holds the global state). Under
        torchrun rank 0 reads the file and sends its bytes, so only rank 0's node needs the run folder."""
        from ganseg.errors import MissingFile

        blob = read_on_main(self.dist, Path(path))
        if blob is None:
            raise MissingFile(f"--resume: no checkpoint at {path}; drop --resume to start anew")
        state = torch.load(io.BytesIO(blob), map_location=self.device, weights_only=True)
        saved = json.loads(state["config"])
        mine = asdict(self.cfg)
        arch = ("resolution", "channels", "z_dim", "w_dim", "mapping_layers")
        if any(saved[k] != mine[k] for k in arch):
            from ganseg.errors import BadInput

            raise BadInput(f"{path}: checkpoint architecture {[saved[k] for k in arch]} differs from "
                           f"the requested {[mine[k] for k in arch]}; resume with the same --res/--channels")
        for name in ("G", "D", "G_ema", "opt_G", "opt_D"):
            getattr(self, name).load_state_dict(state[name])
        self.step, self.images_seen = state["step"], state["images_seen"]
        self.wall_seconds = state["wall_seconds"]

    def warm_start(self, G: Generator, D: Discriminator) -> None:
        """Start G, G_ema and D from shipped weights (e.g. the bundled default); the optimizers stay
        fresh. A shipped generator is the EMA one, so both G and G_ema begin as it."""
        if G.cfg != self.G.cfg:
            from ganseg.errors import BadInput

            raise BadInput(f"--init generator config {G.cfg} differs from this run's {self.G.cfg}")
        for net, state in ((self.G, G.state_dict()), (self.G_ema, G.state_dict()), (self.D, D.state_dict())):
            net.load_state_dict({k: v.to(self.device, torch.float32) for k, v in state.items()})

    # ---- one step
    def draw_latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """z, the mixing z and the mixing cut per sample (num_ws: no mixing), for n samples: the draws
        of the global batch, in the order the step always made them."""
        G, cfg, dev = self.G, self.cfg, self.device
        z = torch.randn(n, cfg.z_dim, device=dev)
        if cfg.mixing_prob <= 0:
            return z, None, None
        z2 = torch.randn(n, cfg.z_dim, device=dev)
        cut = torch.randint(1, G.num_ws, (n, 1), device=dev)
        cut = torch.where(torch.rand(n, 1, device=dev) < cfg.mixing_prob, cut, torch.full_like(cut, G.num_ws))
        return z, z2, cut

    def draw_noise(self, n: int) -> list[torch.Tensor]:
        """Per-layer noise maps [n, 1, R, R] of a "random"-noise synthesis pass, drawn up front in the
        layers' order and dtype (what the pass itself would draw), so that rows can be split."""
        dtype = torch.bfloat16 if self.amp else torch.float32
        return [torch.randn(n, 1, conv.resolution, conv.resolution, device=self.device, dtype=dtype)
                for conv in self.G.synthesis.convs]

    def sample_ws(self, n: int) -> torch.Tensor:
        G = self.G
        z, z2, cut = self.draw_latents(n)
        ws = G.mapping(z)[:, None].repeat(1, G.num_ws, 1)
        if z2 is not None:
            mix = torch.arange(G.num_ws, device=self.device)[None] >= cut
            ws = torch.where(mix[:, :, None], G.mapping(z2)[:, None], ws)
        return ws

    def fakes(self, G: torch.nn.Module) -> torch.Tensor:
        """This process's rows of a batch of generated images (G: the DDP-wrapped or plain step)."""
        take = self.share.take
        z, z2, cut = self.draw_latents(self.cfg.batch)
        noise = [take(x) for x in self.draw_noise(self.cfg.batch)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return G(take(z), None if z2 is None else take(z2), None if cut is None else take(cut), noise).float()

    def D_logits(self, img: torch.Tensor, D: torch.nn.Module | None = None) -> torch.Tensor:
        if self.cfg.augment == "diffaug":
            img = diff_augment(img, self.share)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return (D or self.D)(img).float()

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One G and one D step; the losses come back as 0-d tensors on the device, so that reading
        them (a GPU sync) is left to the caller's log interval. Under torchrun they are this process's
        (its rows' mean); `train` averages them over the processes when it logs."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)
        idx = self.share.take(torch.randint(0, images.shape[0], (cfg.batch,)))
        real = from_uint8(images[idx].numpy()).to(self.device)
        logs = {}

        # G: non-saturating loss (through the frozen, plain D: only G's gradients are reduced)
        self.G.requires_grad_(True), self.D.requires_grad_(False)
        loss_G = F.softplus(-self.D_logits(self.fakes(self.G_train))).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        logs["G"] = loss_G.detach()

        # D: logistic loss (+ lazy R1 on reals)
        self.G.requires_grad_(False), self.D.requires_grad_(True)
        with torch.no_grad():
            fake = self.fakes(self.G_step)
        loss_D = F.softplus(self.D_logits(fake, self.D_train)).mean() + \
            F.softplus(-self.D_logits(real, self.D_train)).mean()
        if self.step % cfg.r1_every == 0:
            real_r1 = real.detach().requires_grad_(True)
            logits = self.D_train(diff_augment(real_r1, self.share) if cfg.augment == "diffaug" else real_r1)
            (grad,) = torch.autograd.grad(logits.sum(), real_r1, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            loss_D = loss_D + r1 * (self.r1_gamma / 2) * cfg.r1_every
            logs["r1"] = r1.detach()
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        logs["D"] = loss_D.detach()

        # w_avg (the truncation centre) and EMA: the same latents and weights on every rank
        with torch.no_grad():
            w = self.G.mapping(torch.randn(cfg.batch, cfg.z_dim, device=self.device))
            self.G.mapping.w_avg.copy_(w.mean(0).lerp(self.G.mapping.w_avg, 0.995))
            torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1 - self.ema_beta)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        self.step += 1
        self.images_seen += cfg.batch
        return logs

    def sample_grid(self) -> Path | None:
        if not self.dist.main:
            return None
        with torch.no_grad():
            img = self.G_ema.synthesize(z=self.fixed_z, truncation_psi=1.0, noise_mode="const")
        path = self.out / "samples" / f"step{self.step:07d}.png"
        save_png(path, make_grid(to_uint8(img), ncols=4))
        return path

    def train(self, images: torch.Tensor, steps: int, minutes: float | None = None,
              ckpt_every: int = 500, sample_every: int = 1000) -> None:
        """Train until `steps` total steps or `minutes` of wall time, checkpointing as it goes."""
        t_start = time.time()
        t_last = t_start
        with stop_on_signal() as stop:
            self._train_loop(images, steps, minutes, ckpt_every, sample_every, stop, t_start, t_last)

    def _mean_logs(self, logs: dict[str, torch.Tensor]) -> dict[str, float]:
        """The losses averaged over the processes (each holds its rows' mean): the global batch's."""
        keys = sorted(logs)
        vals = sum_all(self.dist, torch.stack([logs[k].float() for k in keys])) / self.dist.world
        return dict(zip(keys, vals.tolist()))

    def _train_loop(self, images, steps, minutes, ckpt_every, sample_every, stop, t_start, t_last) -> None:
        seen_last = self.images_seen
        main = self.dist.main
        with tqdm(total=steps, initial=self.step, desc="train-gan", unit="step", disable=not main) as bar:
            while self.step < steps:
                logs = self.train_step(images)
                bar.update(1)
                out_of_time = (minutes is not None and time.time() - t_start > minutes * 60) or stop["signal"]
                out_of_time = agree(self.dist, bool(out_of_time))  # every rank stops after the same step
                checkpoint = self.step % ckpt_every == 0 or self.step == steps or out_of_time
                if self.step % 10 == 0 or checkpoint:
                    mean = self._mean_logs(logs)
                    if self.step % 10 == 0:
                        bar.set_postfix(G=f"{mean['G']:.3f}", D=f"{mean['D']:.3f}",
                                        kimg=f"{self.images_seen / 1000:.1f}")
                if checkpoint:
                    now = time.time()
                    self.wall_seconds += now - t_last
                    rate = (self.images_seen - seen_last) / max(now - t_last, 1e-9)
                    t_last, seen_last = now, self.images_seen
                    self.save()
                    # one plain line per checkpoint: a log file that nohup keeps stays readable
                    if main:
                        tqdm.write(f"step {self.step} kimg {self.images_seen / 1000:.2f} {rate:.1f} img/s "
                                   f"G {mean['G']:.3f} D {mean['D']:.3f}", file=sys.stdout)
                        sys.stdout.flush()
                if self.step % sample_every == 0 or self.step == steps or out_of_time:
                    self.sample_grid()
                if out_of_time:
                    break


def mbstd_group(D: Discriminator, n: int) -> int:
    """The minibatch-stddev group size D uses for a batch of n (its forward's rule)."""
    g = min(D.mbstd_group, n)
    return 1 if n % g else g


# --------------------------------------------------------------------------------------------
# CLI: ganseg train-gan

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_float, positive_int

    d = TrainGANConfig()
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, generator.safetensors, samples/)")
    # architecture flags default to None so that --init can tell "given" from "default"
    p.add_argument("--res", type=int, default=None, help=f"resolution (default {d.resolution}; --init: the generator's)")
    p.add_argument("--channels", default=None,
                   help=f"widths per resolution from 4x4 up, comma separated (default {','.join(map(str, d.channels))})")
    p.add_argument("--z-dim", type=int, default=None, help=f"z = w width (default {d.z_dim})")
    p.add_argument("--mapping-layers", type=int, default=None, help=f"(default {d.mapping_layers})")
    p.add_argument("--batch", type=positive_int, default=d.batch)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--augment", choices=["diffaug", "none"], default=d.augment)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=d.precision,
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--n-images", type=positive_int, default=d.n_images, help="procedural training images")
    p.add_argument("--data", default=None, help="train on a folder of images instead")
    p.add_argument("--steps", type=positive_int, default=100_000, help="total steps (resume continues the count)")
    p.add_argument("--minutes", type=positive_float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--ckpt-every", type=positive_int, default=500)
    p.add_argument("--sample-every", type=positive_int, default=1000)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init", nargs=2, metavar=("G", "D"), default=None,
                   help="warm-start from a generator + discriminator .safetensors (e.g. ganseg/weights/"
                        "default_{generator,discriminator}.safetensors): their weights, a fresh optimizer; "
                        "the architecture comes from G")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (1 avoids OpenMP spin contention beside other jobs)")


def config_from_args(args: argparse.Namespace, init: GeneratorConfig | None = None) -> TrainGANConfig:
    """The run's config from the flags; architecture flags left out come from `init` (a warm
    start's generator config, see `load_init`) or else from the defaults."""
    d = TrainGANConfig()
    base = init or d.gen_config()
    channels = [int(c) for c in args.channels.split(",")] if args.channels else list(base.channels)
    return TrainGANConfig(resolution=args.res or base.resolution, channels=channels,
                          z_dim=args.z_dim or base.z_dim, w_dim=args.z_dim or base.w_dim,
                          mapping_layers=args.mapping_layers or base.mapping_layers, batch=args.batch,
                          lr=args.lr, augment=args.augment, precision=args.precision, n_images=args.n_images, data=args.data,
                          seed=args.seed, init=[str(p) for p in args.init] if args.init else [])


def load_init(args: argparse.Namespace) -> tuple[Generator, Discriminator]:
    """`--init G D`: the generator and a discriminator that fits it, or a one-line error (a
    discriminator of other widths, or an architecture flag that contradicts the generator)."""
    from ganseg.checkpoints import load_generator
    from ganseg.errors import BadInput
    from ganseg.checkpoints import load_discriminator

    g_path, d_path = args.init
    G = load_generator(g_path)
    D = load_discriminator(d_path)
    shapes = lambda net: {k: tuple(v.shape) for k, v in net.state_dict().items()}  # noqa: E731
    if shapes(D) != shapes(Discriminator(G.resolution, G.cfg.channels)):
        raise BadInput(f"--init: discriminator {d_path} does not fit generator {g_path} (resolution "
                       f"{G.resolution}, widths {G.cfg.channels}); pass the discriminator trained with it")
    c = G.cfg
    have = {"--res": (args.res, c.resolution), "--z-dim": (args.z_dim, c.z_dim),
            "--mapping-layers": (args.mapping_layers, c.mapping_layers),
            "--channels": (args.channels, ",".join(map(str, c.channels)))}
    clash = [f"{k} {given} (it has {theirs})" for k, (given, theirs) in have.items()
             if given is not None and str(given).replace(" ", "") != str(theirs)]
    if clash:
        raise BadInput(f"--init: {'; '.join(clash)} contradicts the generator {g_path}; drop the flag "
                       f"(the architecture comes from the generator)")
    own = TrainGANConfig(resolution=c.resolution, channels=list(c.channels), z_dim=c.z_dim, w_dim=c.w_dim,
                         mapping_layers=c.mapping_layers).gen_config()
    if own != c:
        raise BadInput(f"--init: generator {g_path} has settings train-gan does not train ({c}); "
                       f"warm-start from a ganseg-trained generator")
    return G, D


def run(args: argparse.Namespace) -> int:
    """`ganseg train-gan`, in one process or as one of torchrun's N (data parallel, see the module doc)."""
    from ganseg.errors import BadInput
    from ganseg.paths import check_out_dir
    from ganseg.training.common import check_batch, env_world, process_device, setup, shutdown

    rank, world, local = env_world()
    out = check_out_dir(args.out)
    if args.data is not None and not Path(args.data).is_dir():
        what = "a file" if Path(args.data).is_file() else "not found"
        raise BadInput(f"--data {args.data}: {what}; pass a folder of .png/.jpg training images")
    if args.batch % world:  # one line from rank 0, before any work; the other ranks leave quietly
        if rank:
            raise SystemExit(2)
        check_batch(args.batch, world)
    device = process_device(args.device, local, world)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.init and args.resume:
        raise BadInput("--init and --resume contradict each other: --resume continues OUT/checkpoint.pt, "
                       "--init starts a new run from G + D; pass one")
    init = load_init(args) if args.init else None
    try:
        cfg = config_from_args(args, init[0].cfg if init else None)
        cfg.gen_config()
    except ValueError as exc:  # int() of --channels, or GeneratorConfig's own checks
        raise BadInput(f"--res {args.res} --channels {args.channels}: {exc}") from None
    dist = setup(torch.device(device), rank, world, local)
    try:
        try:
            trainer = GANTrainer(cfg, out, device, dist)
        except ValueError as exc:  # the networks' own checks of --res / --channels
            raise BadInput(f"--res {args.res} --channels {args.channels}: {exc}") from None
        say = print if dist.main else (lambda *a, **k: None)
        if dist.active:
            say(f"data parallel: {dist.world} processes ({dist.backend}), global batch {cfg.batch}, "
                f"{trainer.share.size} per process")
            if not trainer.equivalent:
                say(f"note: the discriminator's minibatch-stddev groups {mbstd_group(trainer.D, cfg.batch)} images "
                    f"of the global batch but {mbstd_group(trainer.D, trainer.share.size)} per process here, so this "
                    f"run is not step-for-step the one-process run (a --batch of 4 x {dist.world} or more, a "
                    f"multiple of {4 * dist.world}, keeps the groups)")
        if init:
            trainer.warm_start(*init)
            say(f"warm start from {args.init[0]} + {args.init[1]} (fresh optimizer)")
        if args.resume:
            trainer.load(trainer.ckpt_path)
            say(f"resumed at step {trainer.step} ({trainer.images_seen / 1000:.1f} kimg)")
        cache = None if cfg.data else out / f"train_{cfg.resolution}.npy"
        if dist.main:  # rank 0 renders (and caches) the procedural set; the others read its cache
            out.mkdir(parents=True, exist_ok=True)
            images = load_training_images(cfg, cache=cache)
            barrier(dist)
        else:
            barrier(dist)
            images = load_training_images(cfg, cache=cache if cache is not None and cache.is_file() else None)
        trainer.train(images, args.steps, args.minutes, args.ckpt_every, args.sample_every)
        say(f"step {trainer.step}, {trainer.images_seen / 1000:.1f} kimg, {trainer.wall_seconds / 60:.1f} min; "
            f"generator: {out / 'generator.safetensors'}")
    except BaseException:
        shutdown(dist, wait=False)
        raise
    shutdown(dist)
    return 0


def export_bundle(run_dir: Path, dest: Path, dtype: torch.dtype = torch.float16) -> tuple[Path, Path]:
    """A run's EMA generator and its discriminator as shippable safetensors (fp16 by default).

    The discriminator goes along because GAN inversion uses its features as the perceptual term.
    """
    from safetensors.torch import save

    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    cfg = TrainGANConfig(**json.loads(state["config"]))
    G = Generator(cfg.gen_config())
    G.load_state_dict(state["G_ema"])
    g_path = dest / "default_generator.safetensors"
    info = {"step": str(state["step"]), "images_seen": str(state["images_seen"]),
            "train_minutes": f"{state['wall_seconds'] / 60:.1f}", "train_config": state["config"]}
    save_generator(G, g_path, dtype=dtype, extra_metadata=info)
    d_path = dest / "default_discriminator.safetensors"
    d_state = {k: v.to(dtype).contiguous() for k, v in state["D"].items()}
    d_meta = {"config": json.dumps({"resolution": cfg.resolution, "channels": cfg.channels}), **info}
    write_atomic(d_path, save(d_state, metadata=d_meta))
    return g_path, d_path
