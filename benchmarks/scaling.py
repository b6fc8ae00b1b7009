"""Data-parallel scaling of `train-gan` and `train-unet` under the real torchrun: img/s at 1 and N ranks.

Each point is its own `torchrun --standalone --nproc-per-node N benchmarks/scaling.py --worker ...`
(so the figures include DDP's gradient all-reduce, the global-batch batch-norm of the UNet and the
per-step stop agreement, exactly as a training run pays them). Weak scaling: each rank keeps its
batch, so the global batch is N x that; the 1-rank point is a plain process (what one would run
without torchrun), and efficiency = img/s(N) / (N x img/s(1)). Each worker builds the trainer through
the same `training.common.setup` the CLI uses, trains `--warmup` steps, then times `--steps` steps
one by one on rank 0, each fenced by a barrier (and a CUDA synchronize), and reports the median step
(robust to the bursts of other jobs on a shared machine). The GAN's lazy R1 (every 16th step) falls on
step 0, inside the warm-up: the timed steps are plain G + D steps. Random uint8 images: no rendering.

CPU: one thread per rank (torchrun's OMP_NUM_THREADS=1; the 1-rank point gets the same), so 2 ranks
use 2 cores; on a shared machine the figure says as much about the other jobs as about DDP, and the
result files carry the load average. CUDA: one GPU per rank (NCCL); with a single GPU there is no
multi-rank point, and an extra 1-rank DDP point (`--ddp-one`: a one-process NCCL group, DDP,
SyncBatchNorm) measures the wrapper's own cost and proves the NCCL path runs.

    python benchmarks/scaling.py                       # CPU, 1 and 2 ranks -> results/scaling.{json,md,png}
    python benchmarks/scaling.py --device cuda --nprocs 1,8 --out DIR   # a GPU node (tools/gpu_pass.py)
    python benchmarks/scaling.py --merge DIR/scaling.json   # take a GPU run's section into results/

results/scaling.json keeps one section per device ("cpu", "cuda"); a run replaces only its own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, ROOT, environment, environment_markdown, markdown_table, pyplot,  # noqa: E402
                    save_figure, write_json, write_text)

TRAINERS = ("gan", "unet")


@dataclass
class Plan:
    """One device's points: per-rank batch and network size per trainer, steps per point."""

    device: str = "cpu"
    nprocs: list[int] = field(default_factory=lambda: [1, 2])
    trainers: list[str] = field(default_factory=lambda: list(TRAINERS))
    gan: dict = field(default_factory=lambda: {"resolution": 64, "channels": [64, 64, 32, 16, 8], "z_dim": 64,
                                               "w_dim": 64, "mapping_layers": 2, "batch_per_rank": 8})
    unet: dict = field(default_factory=lambda: {"resolution": 64, "width": 16, "depth": 3, "batch_per_rank": 8})
    warmup: int = 2
    steps: int = 8
    ddp_one: bool = False   # also a 1-rank point through DDP (a one-process group)

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> "Plan":
        if quick:  # the test suite's run: seconds of compute, the launcher's start-up dominates
            return cls(device=device, gan={"resolution": 16, "channels": [16, 8, 8], "z_dim": 16, "w_dim": 16,
                                           "mapping_layers": 2, "batch_per_rank": 4},
                       unet={"resolution": 32, "width": 4, "depth": 2, "batch_per_rank": 4}, warmup=1, steps=2)
        if device == "cuda":
            return cls(device="cuda", gan={"resolution": 128, "channels": [256, 256, 256, 256, 128, 64], "z_dim": 256,
                                           "w_dim": 256, "mapping_layers": 4, "batch_per_rank": 32},
                       unet={"resolution": 256, "width": 32, "depth": 4, "batch_per_rank": 16}, warmup=3, steps=10)
        return cls(device=device)


# --------------------------------------------------------------------------------------------
# worker: one torchrun process

def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from ganseg.training.common import agree, env_world, process_device, setup, shutdown

    plan = Plan(**json.loads(args.plan))
    force = args.ddp
    rank, world, local = env_world()
    device = torch.device(process_device(plan.device, local, world))
    if device.type == "cpu":
        torch.set_num_threads(1)
    dist = setup(device, rank, world, local, force=force)
    spec = getattr(plan, args.trainer)
    batch = spec["batch_per_rank"] * world
    gen = torch.Generator().manual_seed(0)
    res = spec["resolution"]
    with tempfile.TemporaryDirectory(prefix="ganseg-scaling-") as tmp:
        if args.trainer == "gan":
            from ganseg.training.train_gan import GANTrainer, TrainGANConfig

            cfg = TrainGANConfig(resolution=res, channels=spec["channels"], z_dim=spec["z_dim"], w_dim=spec["w_dim"],
                                 mapping_layers=spec["mapping_layers"], batch=batch)
            trainer = GANTrainer(cfg, Path(tmp), str(device), dist)
            images = torch.randint(0, 256, (max(64, 2 * batch), res, res, 3), dtype=torch.uint8, generator=gen)

            def step():
                trainer.train_step(images)
        else:
            from ganseg.training.train_unet import LabelledData, UNetTrainConfig, UNetTrainer

            n = max(64, 2 * batch)
            data = LabelledData(torch.randint(0, 256, (n, res, res, 3), dtype=torch.uint8, generator=gen),
                                torch.randint(0, 10, (n, res, res), dtype=torch.uint8, generator=gen),
                                np.arange(n), [f"c{i}" for i in range(10)])
            cfg = UNetTrainConfig(width=spec["width"], depth=spec["depth"], batch=batch, val_fraction=0.0,
                                  steps=10_000)
            trainer = UNetTrainer(cfg, data, tmp, str(device), dist)
            step = trainer.train_step

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            agree(dist, False)  # a barrier on the host group

        for _ in range(plan.warmup):
            step()
        sync()
        times = []
        for _ in range(plan.steps):  # each step fenced (as the training loop's per-step stop agreement)
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        seconds = statistics.median(times)
    row = {"trainer": args.trainer, "device": plan.device, "ranks": world, "ddp": dist.active,
           "backend": dist.backend, "batch_per_rank": spec["batch_per_rank"], "global_batch": batch,
           "resolution": res, "steps": plan.steps, "step_ms": 1e3 * seconds, "img_per_s": batch / seconds,
           "step_ms_all": [round(1e3 * t, 2) for t in times],
           "threads_per_rank": torch.get_num_threads() if device.type == "cpu" else None,
           "bf16": bool(getattr(trainer, "amp", False))}
    if dist.main:
        Path(args.result).write_text(json.dumps(row))
    shutdown(dist)


# --------------------------------------------------------------------------------------------
# driver

def launch(plan: Plan, trainer: str, nproc: int, ddp: bool = False, timeout: float = 600, log=print) -> dict:
    """One point: torchrun (the module form, so a bare copy's interpreter finds it) with N workers;
    `ddp` puts a single worker through DDP too."""
    with tempfile.TemporaryDirectory(prefix="ganseg-scaling-") as tmp:
        result = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               str(Path(__file__).resolve()), "--worker", "--trainer", trainer, "--plan", json.dumps(asdict(plan)),
               "--result", str(result)] + (["--ddp"] if ddp else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        t0 = time.time()
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            failed = None if r.returncode == 0 and result.is_file() else (r.stdout + r.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            failed = f"timed out after {timeout:.0f} s"
        if failed:
            log(f"  scaling {trainer} x{nproc}: FAILED\n{failed}")
            return {"trainer": trainer, "device": plan.device, "ranks": nproc, "ddp": ddp or nproc > 1, "status": "failed",
                    "reason": failed}
        row = json.loads(result.read_text()) | {"status": "ok", "wall_s": time.time() - t0}
    log(f"  scaling {trainer} {plan.device} x{nproc}{' (DDP)' if row['ddp'] else ''}: global batch "
        f"{row['global_batch']}, {row['step_ms']:.0f} ms/step, {row['img_per_s']:.1f} img/s")
    return row


def measure(plan: Plan, log=print) -> dict:
    """Every point of the plan, and the efficiencies against the 1-rank point of each trainer."""
    points = [(t, n, False) for t in plan.trainers for n in plan.nprocs]
    if plan.ddp_one:
        points += [(t, 1, True) for t in plan.trainers]
    rows = [launch(plan, t, n, ddp, log=log) for t, n, ddp in sorted(points, key=lambda p: (plan.trainers.index(p[0]),
                                                                                          p[1], p[2]))]
    for t in plan.trainers:
        base = next((r for r in rows if r["trainer"] == t and r["ranks"] == 1 and r["status"] == "ok"
                     and not r["ddp"]), None)
        for r in rows:
            if r["trainer"] == t and r["status"] == "ok" and base is not None:
                r["speedup"] = r["img_per_s"] / base["img_per_s"]
                r["efficiency"] = r["speedup"] / r["ranks"]
    return {"plan": asdict(plan), "rows": rows, "environment": environment(benchmark="scaling")}


def table(section: dict) -> str:
    rows = section["rows"]
    name = {"gan": "train-gan", "unet": "train-unet"}
    body = [[name[r["trainer"]], r["ranks"], "DDP " + r["backend"] if r.get("ddp") else "one process",
             r.get("batch_per_rank"), r.get("global_batch"), r.get("resolution"), r.get("step_ms"), r.get("img_per_s"),
             r.get("speedup"), f"{100 * r['efficiency']:.0f} %" if r.get("efficiency") is not None else "–"]
            if r["status"] == "ok" else [name[r["trainer"]], r["ranks"], "failed", None, None, None, None, None, None,
                                         r["reason"].splitlines()[-1][:80] if r.get("reason") else "–"]
            for r in rows]
    return markdown_table(["trainer", "ranks", "engine", "batch / rank", "global batch", "res", "ms / step",
                           "img/s", "speedup", "efficiency"], body,
                          numeric=[False, True, False, True, True, True, True, True, True, True], digits=2)


def markdown(doc: dict) -> str:
    parts = ["# Data-parallel scaling (torchrun, weak scaling)\n\n",
             "Each rank keeps its batch (global batch = ranks x batch / rank); efficiency = img/s at N ranks "
             "/ (N x img/s of one plain process). `python benchmarks/scaling.py` (CPU), "
             "`tools/gpu_pass.py` (CUDA, one rank per GPU).\n"]
    for dev, title in (("cpu", "CPU (gloo), one thread per rank"), ("cuda", "GPU (NCCL), one GPU per rank")):
        sec = doc.get(dev)
        parts.append(f"\n## {title}\n\n")
        if not sec:
            parts.append("Not measured yet: `tools/gpu_pass.py` runs this section when a GPU machine is lent "
                         "(`python benchmarks/scaling.py --merge scaling/scaling.json`, from its results.tar.gz, brings it "
                         "here).\n"
                         if dev == "cuda" else "Not measured yet.\n")
            continue
        env = sec["environment"]
        parts += [environment_markdown(env), "\n", table(sec)]
        if dev == "cpu" and env.get("usable_cores", 0) < 2 * max(sec["plan"]["nprocs"]):
            parts.append(f"\n{env.get('usable_cores')} usable cores for up to {max(sec['plan']['nprocs'])} "
                         f"single-threaded ranks: the ranks share the cores with each other's gloo threads and "
                         f"with whatever else runs.\n")
    if doc.get("plot"):
        parts.append(f"\n![scaling]({doc['plot']})\n")
    return "".join(parts)


def plot(doc: dict, path: Path) -> Path | None:
    secs = [(dev, doc[dev]) for dev in ("cpu", "cuda") if doc.get(dev)]
    if not secs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(secs), figsize=(5 * len(secs), 3.8), squeeze=False)
    for ax, (dev, sec) in zip(axes[0], secs):
        for i, t in enumerate(TRAINERS):
            pts = sorted((r["ranks"], r["img_per_s"]) for r in sec["rows"]
                         if r["trainer"] == t and r["status"] == "ok" and r.get("efficiency") is not None)
            if not pts:
                continue
            ax.plot(*zip(*pts), "-o", color=f"C{i}", label=f"train-{t}")
            ax.plot([p[0] for p in pts], [pts[0][1] * p[0] for p in pts], ":", color=f"C{i}", alpha=0.6,
                    label=f"train-{t}, linear")
        ranks = sorted({r["ranks"] for r in sec["rows"]})
        ax.set_xticks(ranks, [str(n) for n in ranks])
        ax.set_xlabel("ranks")
        ax.set_ylabel("img/s (global)")
        ax.set_title(f"{dev}: {sec['environment']['host']} {sec['environment']['date'][:10]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    p = plot(doc, out / "scaling.png")
    doc["plot"] = p.name if p else None
    write_json(out / "scaling.json", doc)
    write_text(out / "scaling.md", markdown(doc))


def load(out: Path) -> dict:
    f = out / "scaling.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    ap.add_argument("--nprocs", default=None, help="comma list of rank counts (default 1,2; cuda: 1,<GPUs>)")
    ap.add_argument("--trainers", default=",".join(TRAINERS), help="comma list of gan, unet")
    ap.add_argument("--quick", action="store_true", help="tiny networks, 1 + 2 timed steps (the test suite's run)")
    ap.add_argument("--ddp-one", action="store_true", help="also a 1-rank point through DDP (one-process group)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--merge", default=None, metavar="JSON", help="only take this file's sections into --out")
    # a worker's own arguments (torchrun starts this file again with them)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--trainer", choices=TRAINERS, help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--ddp", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    doc = load(out)
    if args.merge:
        other = json.loads(Path(args.merge).read_text())
        doc.update({k: other[k] for k in ("cpu", "cuda") if other.get(k)})
        write(doc, out)
        print(f"merged {[k for k in ('cpu', 'cuda') if other.get(k)]} into {out / 'scaling.json'}")
        return 0
    plan = Plan.for_device(args.device, args.quick)
    if args.nprocs:
        plan.nprocs = [int(n) for n in args.nprocs.split(",")]
    elif args.device == "cuda":
        import torch

        plan.nprocs = sorted({1, max(1, torch.cuda.device_count())})
    plan.trainers = [t for t in args.trainers.split(",") if t]
    plan.ddp_one = args.ddp_one
    unknown = [t for t in plan.trainers if t not in TRAINERS]
    if unknown:
        ap.error(f"unknown trainer(s) {unknown}; known: {', '.join(TRAINERS)}")
    doc[args.device] = measure(plan)
    write(doc, out)
    print(table(doc[args.device]))
    return 0 if all(r["status"] == "ok" for r in doc[args.device]["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
