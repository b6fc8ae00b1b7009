"""The GPU pass in one prepared command: profile, train a generator, export it, check the CUDA kernel.

GPU minutes are scarce (about 15 per session, start-up included, at most 10 per command) and the
machine is bare: a plain copy of the tree, ganseg not pip-installed, no `.git` (Python 3.12,
torch 2.11, numpy 2.5 on the H200 image). So this script imports ganseg from the copy
(`ganseg.bootstrap`: root on sys.path, the install's `ganseg.training/.export/.serving` mapping,
for this process and every stage it starts), and the test suite runs it that way on CPU
(`--smoke`, tests/test_gpu_pass.py): a typo or a missing import costs seconds here, not a GPU session.

Stages, in order, inside `--budget` seconds of wall time (checked between stages; each stage is its
own process with its own time limit, a failed stage is logged and the next ones still run):
  1. profile  img/s of `train-gan` steps at 128² (and 64² if 128² is too slow), then a torch.profiler
              table of the top kernels over 20 steps of the chosen configuration (CPU ops on a CPU),
              so a slow run explains itself;
  2. gan      `train-gan` at the resolution whose measured img/s lets this run see >= 1 M images
              (else 64²), warm-started (`--init`) from the bundled default G + D when the
              architecture fits (the bundled default is 64²; 128² starts fresh unless `--init` gives
              a 128² generator);
  3. export   fp16 EMA generator + discriminator (`export_bundle`), a sample grid, the training log;
  4. kernel   benchmarks/gpu_kernel_check.py, then gpu   benchmarks/gpu.py, with the time left;
  5. scaling  benchmarks/scaling.py on CUDA: train-gan / train-unet img/s through torchrun with one
              rank per GPU (1 and all GPUs; with one GPU, a plain and a one-rank DDP/NCCL point), the
              GPU section of benchmarks/results/scaling.md (`scaling.py --merge` takes it there).

What comes back (OUT, the device tool's `$OUT`): at most 8 files, each <= 16 MiB (checked, and any
breach recorded):

    OUT/default_generator.safetensors, OUT/default_discriminator.safetensors, OUT/samples.png
    OUT/gpu_pass.json   environment (commit "unknown" without a .git of its own), the resolution
                        choice and why, measured img/s, every stage's exit status and seconds
    OUT/gpu_pass.md     the same in words, with the profiler table
    OUT/results.tar.gz  profile table + JSON, training log, every stage's output, kernel and gpu results

OUT is refreshed after every stage, so a run cut short still brings back what finished. On the device:

    python tools/gpu_pass.py --out $OUT
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a plain copy: `python tools/gpu_pass.py` puts tools/ on sys.path, not the root
    sys.path.insert(0, str(ROOT))
from ganseg import bootstrap  # noqa: E402

bootstrap.install(ROOT)

WEIGHTS = ROOT / "ganseg" / "weights"
TARGET_IMAGES = 1_000_000       # one run should see at least this many images (issue 16)
MAX_FILES, MAX_MIB = 8, 16      # what the device tool brings back
# fresh-start architectures per resolution (the fp16 128² generator stays well under 16 MiB);
# the resolution of the --init generator uses that generator's own architecture instead
ARCH = {128: ["--res", "128", "--channels", "256,256,256,256,128,64", "--z-dim", "256", "--mapping-layers", "4"],
        64: ["--res", "64", "--channels", "256,256,128,64,32", "--z-dim", "256", "--mapping-layers", "4"]}
BATCH = {128: 32, 64: 64}
# smoke: batch 2, and a narrow 128² network so that the CPU measures it in a second
SMOKE_BATCH = 2
SMOKE_ARCH = {128: ["--res", "128", "--channels", "32,32,32,16,8,4", "--z-dim", "32", "--mapping-layers", "2"],
              64: ["--res", "64", "--channels", "32,32,16,8,4", "--z-dim", "32", "--mapping-layers", "2"]}


SCALING_S = 90                  # the scaling stage's share of the budget (4 short torchrun points on one GPU)


def scaling_cmd(py: str, out: Path, smoke: bool) -> list[str]:
    """benchmarks/scaling.py through torchrun's module form (this interpreter, no console script needed;
    the workers find ganseg through benchmarks/common.py's bootstrap). On a GPU: one rank per GPU,
    and with a single GPU a one-rank DDP point beside the plain one (the NCCL path, SyncBatchNorm).
    Smoke: 2 CPU ranks of the tiny UNet (gloo), one launch, so the bare-copy imports are checked."""
    cmd = [py, "benchmarks/scaling.py", "--out", str(out)]
    if smoke:
        return cmd + ["--device", "cpu", "--quick", "--nprocs", "2", "--trainers", "unet"]
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return cmd + ["--device", "cpu", "--nprocs", "1,2"]
    return cmd + ["--device", "cuda", "--nprocs", f"1,{gpus}" if gpus > 1 else "1"] + (["--ddp-one"] if gpus == 1 else [])


class Budget:
    """Wall-clock seconds left of the pass; each stage's time limit is cut to what is left."""

    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


# --------------------------------------------------------------------------------------------
# training configurations

def init_resolution(init: list[str]) -> int:
    """Resolution of the warm-start generator (read from its weights' config)."""
    from ganseg.checkpoints import load_generator

    return load_generator(init[0]).resolution


def train_args(res: int, init: list[str], init_res: int, smoke: bool) -> list[str]:
    """`train-gan` flags (without --out and the time limits) of the configuration trained at `res`."""
    arch = ["--init", *init] if res == init_res else (SMOKE_ARCH if smoke else ARCH)[res]
    return arch + ["--batch", str(SMOKE_BATCH if smoke else BATCH[res])]


def trainer_for(args_list: list[str], device: str):
    """A GANTrainer built exactly as `train-gan` builds it from these flags (same config, same --init)."""
    from ganseg.training import train_gan

    p = argparse.ArgumentParser()
    train_gan.add_arguments(p)
    a = p.parse_args(args_list + ["--out", tempfile.mkdtemp(prefix="ganseg_profile_")])
    init = train_gan.load_init(a) if a.init else None
    cfg = train_gan.config_from_args(a, init[0].cfg if init else None)
    trainer = train_gan.GANTrainer(cfg, Path(a.out), device)
    if init:
        trainer.warm_start(*init)
    return trainer


def training_batch(trainer, n: int):
    import torch

    from ganseg.faces import render_faces, split_seeds

    return torch.from_numpy(render_faces(split_seeds("train", n), resolution=trainer.cfg.resolution)[0])


def profile_stage(plan: dict, work: Path) -> None:
    """Stage 1 (own process): img/s per resolution, the choice, and a profiler table of the chosen one."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.common import device_sync, measure

    device = "cuda" if torch.cuda.is_available() and not plan["smoke"] else "cpu"
    torch.set_num_threads(1 if plan["smoke"] else os.cpu_count() or 1)  # as the gan stage's --threads
    sync = device_sync(device)
    warmup, repeats, prof_steps = (1, 2, 2) if plan["smoke"] else (3, 10, 20)
    need = plan["need_img_per_s"]
    doc: dict = {"device": device, "need_img_per_s": need, "rates": {}}
    trainer = x = None
    for res in (128, 64):
        trainer = trainer_for(plan["configs"][str(res)], device)
        x = training_batch(trainer, 16 if plan["smoke"] else 512)
        t = measure(lambda: trainer.train_step(x), warmup=warmup, repeats=repeats, items=trainer.cfg.batch,
                    sync=sync)
        doc["rates"][str(res)] = t.items_per_s
        print(f"[profile] {res}²: {t.items_per_s:.1f} img/s (batch {trainer.cfg.batch}, median of {repeats} steps)")
        doc["chosen"] = res
        if t.items_per_s >= need:
            break
    res = doc["chosen"]
    doc["reason"] = (f"{res}²: {doc['rates'][str(res)]:.0f} img/s measured, {need:.0f} needed for "
                     f"{TARGET_IMAGES:,} images in the training time" if doc["rates"][str(res)] >= need else
                     f"fallback {res}²: measured {', '.join(f'{r}² {v:.0f}' for r, v in doc['rates'].items())} "
                     f"img/s, {need:.0f} needed for {TARGET_IMAGES:,} images: not reached")
    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(prof_steps):
            trainer.train_step(x)
        sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:25]
    doc["profile"] = {"steps": prof_steps, "resolution": res, "batch": trainer.cfg.batch, "sort": key,
                      "top": [{"name": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1e3} for e in events]}
    table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
    (work / "profile.txt").write_text(f"{prof_steps} train-gan steps, {res}², batch {trainer.cfg.batch}, "
                                      f"{device}, sorted by {key}\n\n{table}\n")
    (work / "profile.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(table[:6000])


# --------------------------------------------------------------------------------------------
# stages run by the driver

def stage(name: str, cmd: list[str], timeout_s: float, log: dict, work: Path) -> bool:
    """Run one stage as its own process (a crash or hang in one stage does not lose the others);
    its output goes to work/logs/NAME.log, its tail to this process's output."""
    entry = {"stage": name, "cmd": cmd, "timeout_s": round(timeout_s)}
    log["stages"].append(entry)
    if timeout_s < 5:
        entry.update(rc="skipped", reason="out of time")
        print(f"[gpu_pass] {name}: skipped, out of time", flush=True)
        return False
    print(f"[gpu_pass] {name} (limit {timeout_s:.0f} s): {' '.join(cmd)}", flush=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.time()
    with open(logs / f"{name}.log", "wb") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, timeout=timeout_s, stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    entry.update(rc=rc, seconds=round(time.time() - t0, 1))
    tail = (logs / f"{name}.log").read_bytes()[-1500:].decode(errors="replace").replace("\r", "\n")
    print("\n".join(tail.splitlines()[-8:]) + f"\n[gpu_pass] {name}: rc={rc} in {time.time() - t0:.0f} s",
          flush=True)
    return rc == 0


def in_process(name: str, fn, log: dict) -> bool:
    """A short stage run in this process; an exception is logged with its traceback, not raised."""
    t0 = time.time()
    entry: dict = {"stage": name}
    log["stages"].append(entry)
    try:
        fn()
        entry["rc"] = 0
    except Exception:  # noqa: BLE001 - the next stages must still run; the traceback is kept
        entry.update(rc=1, error=traceback.format_exc()[-3000:])
        print(f"[gpu_pass] {name} failed:\n{entry['error']}", flush=True)
    entry["seconds"] = round(time.time() - t0, 1)
    return entry["rc"] == 0


def export_gan(run: Path, dest: Path, log: dict) -> None:
    """Stage 3: fp16 EMA generator + discriminator, a sample grid and the training log of the run."""
    import torch

    from ganseg.checkpoints import load_generator
    from ganseg.images import make_grid, save_png, to_uint8, write_atomic
    from ganseg.training.train_gan import export_bundle

    dest.mkdir(parents=True, exist_ok=True)
    g_path, d_path = export_bundle(run, dest)
    G = load_generator(g_path)
    z = torch.randn(16, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = G.synthesize(z=z.to(G.device), truncation_psi=0.7)
    save_png(dest / "samples.png", make_grid(to_uint8(img)))
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    doc = {k: state[k] for k in ("step", "images_seen", "wall_seconds") if k in state}
    doc["config"] = json.loads(state["config"])
    doc["kimg"] = doc.get("images_seen", 0) / 1000
    if doc.get("wall_seconds"):
        doc["img_per_s"] = doc["images_seen"] / doc["wall_seconds"]
    write_atomic(dest / "train_log.json", (json.dumps(doc, indent=1) + "\n").encode())
    log["gan"] = {k: v for k, v in doc.items() if k != "config"} | {
        "resolution": doc["config"]["resolution"], "init": doc["config"].get("init"),
        "generator_mib": round(g_path.stat().st_size / 2**20, 2),
        "discriminator_mib": round(d_path.stat().st_size / 2**20, 2)}


def summary_md(log: dict, work: Path) -> str:
    lines = [f"# GPU pass, {log['started']} (commit {log['environment'].get('git_commit')})", ""]
    env = log["environment"]
    gpu = env["gpu"].get("name") if env["gpu"].get("available") else "no GPU"
    lines += [f"{gpu}; {env['cpu']}, {env['cores']} cores; Python {env['versions'].get('python')}, "
              f"torch {env['versions'].get('torch')}, numpy {env['versions'].get('numpy')}", ""]
    if "choice" in log:
        lines += [f"Resolution: {log['choice']}", ""]
    if "gan" in log:
        g = log["gan"]
        lines += [f"GAN: {g['resolution']}², {g.get('kimg', 0):.1f} kimg, {g.get('img_per_s', 0):.0f} img/s "
                  f"over {g.get('wall_seconds', 0):.0f} s of training; init {g.get('init') or 'none (fresh)'}", "",
                  "Next, on the project machine: `make adopt G=default_generator.safetensors "
                  "D=default_discriminator.safetensors` (these files; the probe decides)", ""]
    lines += ["| stage | rc | seconds |", "|---|---|---:|"]
    lines += [f"| {s['stage']} | {s.get('rc')} | {s.get('seconds', '–')} |" for s in log["stages"]]
    if (work / "profile.txt").is_file():
        lines += ["", "## Profile", "", "```", (work / "profile.txt").read_text(), "```"]
    return "\n".join(lines) + "\n"


def pack(out: Path, work: Path, log: dict) -> None:
    """Refresh OUT from the work folder: the exported files, the summaries and one tar of the rest."""
    from ganseg.images import write_atomic

    for name in ("default_generator.safetensors", "default_discriminator.safetensors", "samples.png"):
        if (work / "gan" / name).is_file():
            shutil.copyfile(work / "gan" / name, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            if path.is_file() and rel.parts[0] != "run" and path.suffix != ".safetensors" and path.name != "samples.png":
                tar.add(path, arcname=str(rel))
    write_atomic(out / "results.tar.gz", buf.getvalue())
    files = [p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")] + [out / "gpu_pass.json",
                                                                                          out / "gpu_pass.md"]
    names = sorted({p.name for p in files})
    big = [p.name for p in files if p.is_file() and p.stat().st_size > MAX_MIB * 2**20]
    log["limits"] = {"files": names, "ok": len(names) <= MAX_FILES and not big, "over_16_mib": big}
    write_atomic(out / "gpu_pass.json", (json.dumps(log, indent=1, default=str) + "\n").encode())
    write_atomic(out / "gpu_pass.md", summary_md(log, work).encode())


# --------------------------------------------------------------------------------------------
# driver

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_pass"), help="results folder ($OUT on the device)")
    p.add_argument("--budget", type=float, default=540, help="wall-clock seconds for all stages together")
    p.add_argument("--gan-minutes", type=float, default=6.0, help="training time at most (less if the budget is short)")
    p.add_argument("--init", nargs=2, metavar=("G", "D"),
                   default=[str(WEIGHTS / "default_generator.safetensors"), str(WEIGHTS / "default_discriminator.safetensors")],
                   help="warm-start generator + discriminator (used at their own resolution)")
    p.add_argument("--skip", default="", help="comma list of stages to skip: profile,gan,kernel,gpu,scaling")
    p.add_argument("--smoke", action="store_true", help="CPU smoke test: batch 2, 2 training steps, smoke kernel check")
    p.add_argument("--stage", choices=["profile"], help=argparse.SUPPRESS)  # a stage's own process
    p.add_argument("--plan", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage == "profile":
        plan = json.loads(Path(args.plan).read_text())
        profile_stage(plan, Path(plan["work"]))
        return 0

    from benchmarks.common import environment

    budget = Budget(args.budget)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ganseg_gpu_pass_"))
    skip = set(filter(None, args.skip.split(",")))
    py = sys.executable
    log: dict = {"smoke": args.smoke, "budget_s": args.budget, "stages": [],
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment(benchmark="gpu_pass")}
    print(f"[gpu_pass] commit {log['environment']['git_commit']}, work folder {work}", flush=True)
    # time kept back for what follows the training: rendering + start-up, export, the kernel stage
    scaling_s = 0 if "scaling" in skip else 60 if args.smoke else SCALING_S
    after_gan = 40 if args.smoke else 60 + 30 + 120 + scaling_s
    prof_limit, prof_expected = (90, 30) if args.smoke else (150, 60)
    # the training time the resolution choice plans for; recomputed from the clock once profiled
    gan_s = max(10.0, min(args.gan_minutes * 60, budget.left() - prof_expected - after_gan))
    init_res = init_resolution(args.init)
    configs = {str(r): train_args(r, args.init, init_res, args.smoke) for r in (128, 64)}
    plan = {"smoke": args.smoke, "work": str(work), "configs": configs, "need_img_per_s": TARGET_IMAGES / gan_s}
    log["plan"] = plan | {"gan_seconds": gan_s, "init_resolution": init_res}
    chosen = 64

    if "profile" not in skip:
        (work / "plan.json").write_text(json.dumps(plan))
        cmd = [py, str(Path(__file__).resolve()), "--stage", "profile", "--plan", str(work / "plan.json")]
        if stage("profile", cmd, min(prof_limit, budget.left()), log, work):
            prof = json.loads((work / "profile.json").read_text())
            chosen = prof["chosen"]
            log["profile"] = {k: prof[k] for k in ("device", "rates", "chosen", "reason")}
            log["choice"] = prof["reason"]
        else:
            log["choice"] = "64² (fallback: the profile stage failed, no throughput measured)"
        pack(out, work, log)
    else:
        log["choice"] = "64² (profile skipped, no throughput measured)"
    print(f"[gpu_pass] resolution: {log['choice']}", flush=True)

    if "gan" not in skip:
        run = work / "run"
        gan_s = max(10.0, min(args.gan_minutes * 60, budget.left() - after_gan))
        cmd = [py, "-m", "ganseg.bootstrap", "-m", "ganseg.cli", "train-gan", "--out", str(run),
               *configs[str(chosen)], "--ckpt-every", "2000", "--sample-every", "1000000"]
        if args.smoke:
            cmd += ["--n-images", "16", "--steps", "2", "--device", "cpu", "--threads", "1"]
        else:
            cmd += ["--minutes", f"{gan_s / 60:.2f}", "--steps", "10000000", "--threads", str(os.cpu_count() or 1)]
        log["plan"]["gan_seconds"] = gan_s
        ok = stage("gan", cmd, min(gan_s + 90, budget.left() - 30), log, work)
        if ok or (run / "checkpoint.pt").is_file():  # a timed-out run still has its last checkpoint
            in_process("export", lambda: export_gan(run, work / "gan", log), log)
        pack(out, work, log)
    if "kernel" not in skip:
        cmd = [py, "-m", "ganseg.bootstrap", "benchmarks/gpu_kernel_check.py", "--out", str(work / "kernel")]
        reserve = 30 if args.smoke else 60  # keep a minute for gpu.py
        kernel_s = min(240, budget.left() - reserve)
        # the check starts no new output size after --budget-s; ~90 s stay for the extension build
        # (three sources, 40-60 s) and the size in flight, so the stage ends inside its timeout
        cmd += ["--budget-s", str(max(20, int(kernel_s - 90)))]
        stage("kernel", cmd + (["--smoke"] if args.smoke else []), kernel_s, log, work)
        pack(out, work, log)
    if "gpu" not in skip:  # on a CPU every GPU row is recorded as absent, in seconds
        cmd = [py, "-m", "ganseg.bootstrap", "benchmarks/gpu.py", "--out", str(work / "gpu")]
        stage("gpu", cmd, min(240, budget.left() - max(5, scaling_s)), log, work)
        pack(out, work, log)
    if "scaling" not in skip:
        stage("scaling", scaling_cmd(py, work / "scaling", args.smoke), min(max(scaling_s, 30), budget.left() - 5),
              log, work)
    log["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    pack(out, work, log)
    print(f"[gpu_pass] results in {out}: {', '.join(log['limits']['files'])}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s.get("rc") == 0 for s in log["stages"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
