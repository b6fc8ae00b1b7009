"""Helpers shared by the training loops: polite stops, and data-parallel training under torchrun.

Data parallelism (`torchrun --nproc-per-node N -m ganseg.cli train-gan|train-unet ...`) uses torch's
own engine: `torch.distributed` process groups (NCCL on GPUs, gloo on CPUs), DistributedDataParallel
for the gradients, `nn.SyncBatchNorm` on GPUs. What lives here is the glue the two trainers share:

- `setup(device)`: reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK, starts the process group, picks
  `cuda:LOCAL_RANK`; one process (no torchrun) needs no process group at all.
- `batch_share`: which rows of a step's *global* batch this process computes. Every process draws the
  step's randomness for the whole global batch from the same (seed, step) stream, exactly as one
  process does, and keeps its own rows. So ranks see disjoint samples, noise and augmentations, and
  N processes compute what one process computes: a checkpoint does not depend on N, and a run can be
  resumed with another N.
- host-side agreement (`agree`, `barrier`, `read_on_main`) on a gloo group, so a stop request or a
  time limit ends every rank at the same step and a checkpoint is read by rank 0 only.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn


@contextmanager
def stop_on_signal() -> Iterator[dict]:
    """Turn SIGTERM/SIGINT (a job scheduler, a session ending, Ctrl-C) into a polite stop request.

    Yields a dict whose "signal" becomes the signal number; the loop finishes its step, checkpoints
    and returns instead of dying mid-write. Outside the main thread no handler can be installed, so
    the request simply never comes.
    """
    stop: dict = {"signal": None}
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {s: signal.signal(s, lambda sig, frame: stop.update(signal=sig))
                    for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------
# where this process sits

@dataclass
class Dist:
    """This process's place in a torchrun job; the default is the one process of a plain run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None   # "nccl" / "gloo" while a process group is up; None: no process group
    ctrl: Any = None             # gloo group for host-side agreement (None: the default group)

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world(env: dict | None = None) -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun (and srun wrappers that mimic it) set them; (0, 1, 0)
    outside a launcher."""
    from ganseg.errors import BadInput

    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return 0, 1, 0
    try:
        rank, world = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise BadInput(f"bad RANK/WORLD_SIZE/LOCAL_RANK environment ({env.get('RANK')!r}/"
                       f"{env.get('WORLD_SIZE')!r}/{env.get('LOCAL_RANK')!r}); launch with torchrun") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise BadInput(f"bad RANK/WORLD_SIZE environment: rank {rank} of {world}; launch with torchrun")
    return rank, world, local


def check_batch(batch: int, world: int, flag: str = "--batch") -> None:
    """--batch is the global batch: it must split evenly over the processes (checked before any work)."""
    if batch % world:
        from ganseg.errors import BadInput

        lo, hi = max(world, batch - batch % world), batch - batch % world + world
        raise BadInput(f"{flag} {batch} does not split over {world} processes ({flag} is the global batch, "
                       f"each process computes {flag}/{world}); pass a multiple of {world}, e.g. {lo} or {hi}")


def process_device(device: str, local_rank: int, world: int) -> str:
    """The device of this process: plain `cuda` becomes `cuda:LOCAL_RANK` under torchrun (one GPU per
    process); an explicit index with several processes would put them all on one GPU, so it is refused."""
    if world > 1 and device.startswith("cuda:"):
        from ganseg.errors import BadInput

        raise BadInput(f"--device {device} with {world} processes would put every process on one GPU; pass "
                       f"--device cuda (process i uses cuda:LOCAL_RANK; CUDA_VISIBLE_DEVICES picks the GPUs)")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{local_rank}"
    return device


def setup(device: torch.device, rank: int, world: int, local_rank: int, force: bool = False) -> Dist:
    """Start the process group of a torchrun job (NCCL for CUDA devices, gloo otherwise).

    One process needs none, unless `force` (a benchmark that exercises the DDP path on one GPU)."""
    if world == 1 and not force:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    # stop flags and file bytes travel on the CPU: a gloo group beside NCCL (no GPU sync per step)
    ctrl = dist.new_group(backend="gloo") if backend == "nccl" else None
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, backend=backend, ctrl=ctrl)


def shutdown(d: Dist, wait: bool = True) -> None:
    """End the process group: after a barrier when all went well (rank 0 may still be writing), at
    once on an error (the other ranks may never reach a barrier)."""
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            if wait:
                dist.barrier(group=d.ctrl)
            dist.destroy_process_group()


def agree(d: Dist, flag: bool) -> bool:
    """True on every rank if it is true on any: a stop request (SIGTERM reaches ranks at different
    steps) or a time limit (each rank has its own clock) must end all ranks after the same step."""
    if not d.active:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.ctrl)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier(group=d.ctrl)


def read_on_main(d: Dist, path: Path) -> bytes | None:
    """The file's bytes, read by rank 0 and sent to every rank (None on all if rank 0 has no such file).

    Why: on several nodes only rank 0's node needs the run folder (it writes the checkpoints), and
    every rank must make the same decision about a missing checkpoint, or the others would hang."""
    path = Path(path)
    if not d.active:
        return path.read_bytes() if path.is_file() else None
    import torch.distributed as dist

    data = (path.read_bytes() if path.is_file() else None) if d.main else None
    size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0, group=d.ctrl)
    if size.item() < 0:
        return None
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if d.main else torch.empty(int(size.item()), dtype=torch.uint8)
    dist.broadcast(buf, src=0, group=d.ctrl)
    return data if d.main else buf.numpy().tobytes()


def sum_all(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum of a (detached) tensor over the ranks, on its own device (no gradient)."""
    if not d.active:
        return t
    import torch.distributed as dist

    t = t.detach().clone()
    dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------------------------
# which rows of the global batch this process computes

@dataclass(frozen=True)
class Share:
    """Rows of a step's global batch (`total` rows) that this process computes; `index` None: all."""

    total: int
    index: torch.Tensor | None = None
    _on: dict = field(default_factory=dict, compare=False, repr=False)  # index per device (no copy per call)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return t
        if t.device not in self._on:
            self._on[t.device] = self.index.to(t.device)
        return t[self._on[t.device]]

    @property
    def size(self) -> int:
        return self.total if self.index is None else len(self.index)


def batch_share(batch: int, world: int, rank: int, group: int = 1) -> Share:
    """Rank `rank`'s rows of a global batch, keeping groups of rows that must meet in one process.

    `group` > 1 is StyleGAN2's minibatch-stddev: sample i of a batch of n joins group i % (n / g), so
    rank r takes whole columns of the global batch viewed as [g, n/g] and its local batch, grouped the
    same way by the discriminator, forms the same groups as the global one. Without groups (or when
    they cannot be kept) the ranks take contiguous slices."""
    if world == 1:
        return Share(batch)
    per = batch // world
    cols = batch // group
    if group > 1 and cols % world == 0:
        index = torch.arange(batch).view(group, cols)[:, rank * cols // world:(rank + 1) * cols // world].reshape(-1)
    else:
        index = torch.arange(rank * per, (rank + 1) * per)
    return Share(batch, index)


# --------------------------------------------------------------------------------------------
# modules under DistributedDataParallel

def ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """torch's DistributedDataParallel around `module`. Buffers are not broadcast: the trainers keep
    them identical on every rank themselves (synchronized batch-norm statistics, the generator's
    w_avg from the same latents on every rank)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # torch >= 2.12 names the switch forward_sync_buffers (broadcast_buffers warns there)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch, on any device.

    torch's `nn.SyncBatchNorm` does this on GPUs only (its kernels, batch_norm_stats & co., have no CPU
    implementation); this one reduces the per-channel sums with torch.distributed's differentiable
    all_reduce, so gloo on CPUs gives the same normalization (and the same gradients) as one process
    holding the whole batch. Parameters and buffers are BatchNorm2d's: checkpoints do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed import _functional_collectives as funcol  # all_reduce with autograd

        c = x.shape[1]
        # one all_reduce of the first two moments about a shift every rank shares (the running mean:
        # near the batch mean once training runs, so E[(x-s)^2] - E[x-s]^2 loses no precision)
        shift = (self.running_mean.detach().to(x.dtype, copy=True) if self.running_mean is not None
                 else x.new_zeros(c)).view(1, c, 1, 1)
        xs = x - shift
        local = torch.cat([xs.sum(dim=(0, 2, 3)), xs.square().sum(dim=(0, 2, 3)), xs.new_full((1,), x.numel() // c)])
        stats = funcol.wait_tensor(funcol.all_reduce(local, "sum", dist.group.WORLD))
        n = stats[-1]
        m1, m2 = stats[:c] / n, stats[c:2 * c] / n
        var = (m2 - m1.square()).clamp_min(0)
        mean = m1 + shift.view(c)
        y = (xs - m1.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `module` normalizing over the global batch: torch's SyncBatchNorm on CUDA,
    `AllReduceBatchNorm2d` elsewhere (same parameters and buffers, same state_dict keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats, device=device)
            new.load_state_dict(child.state_dict())
            if child.affine:  # the very same Parameter objects: optimizers built before still update them
                new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module
