"""Issue 13's GPU pass in one prepared command: train a 128² generator, check the CUDA kernel, time the UNet.

GPU minutes are scarce (about 15 per session, start-up included, at most 10 per command), so this
script is the only thing sent to the device and it is smoke-tested on CPU by the test suite
(`--smoke`): a typo costs seconds here instead of a GPU session. Every stage has its own wall-clock
budget and writes its results before the next one starts, so a run cut short still brings back
what finished. Results go under OUT (the device tool's `$OUT`), each file well under 16 MiB:

    OUT/gan/default_generator.safetensors      EMA generator, fp16 (ganseg format)
    OUT/gan/default_discriminator.safetensors  discriminator, fp16 (inversion's perceptual term)
    OUT/gan/samples.png, OUT/gan/train_log.json  sample grid; kimg, img/s, losses, wall time
    OUT/kernel/...                             benchmarks/gpu_kernel_check.py (parity + timings)
    OUT/gpu/gpu.{json,md}                      benchmarks/gpu.py (UNet + feature-step GPU rows)
    OUT/gpu_pass.json                          what ran, how long, and each stage's exit status

Resuming: the trainer's full checkpoint (optimizer states, ~10x the fp16 generator) is too large
to bring back, so a later GPU run starts a new run (`--init` is not offered: it would not be
bit-for-bit). On the device:

    python tools/gpu_pass.py --out $OUT --gan-minutes 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# 128² widths chosen so that the fp16 EMA generator stays well under the 16 MiB a file may have
GAN_128 = ["--res", "128", "--channels", "256,256,256,256,128,64", "--z-dim", "256",
           "--mapping-layers", "4", "--batch", "32", "--n-images", "20000"]
GAN_SMOKE = ["--res", "64", "--channels", "32,32,32,16,8", "--z-dim", "32", "--mapping-layers", "2",
             "--batch", "4", "--n-images", "16", "--steps", "2"]


def stage(name: str, cmd: list[str], timeout_s: float, log: dict, env: dict | None = None) -> bool:
    """Run one stage as its own process (a crash or hang in one stage does not lose the others)."""
    print(f"[gpu_pass] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=timeout_s, env=env).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    log["stages"].append({"stage": name, "cmd": cmd, "rc": rc, "seconds": round(time.time() - t0, 1)})
    print(f"[gpu_pass] {name}: rc={rc} in {time.time() - t0:.0f} s", flush=True)
    return rc == 0


def gan_files(run: Path, dest: Path, log: dict) -> None:
    """fp16 EMA generator + discriminator, a sample grid and the training log out of a train-gan run."""
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
    doc["kimg"] = doc.get("images_seen", 0) / 1000
    if doc.get("wall_seconds"):
        doc["img_per_s"] = doc["images_seen"] / doc["wall_seconds"]
    for name in ("log.json", "train_log.json", "history.json"):  # the trainer's own log, if it keeps one
        if (run / name).is_file():
            doc["trainer_log"] = json.loads((run / name).read_text())
    write_atomic(dest / "train_log.json", (json.dumps(doc, indent=1) + "\n").encode())
    log["gan"] = {k: v for k, v in doc.items() if k != "trainer_log"} | {
        "generator_mib": round(g_path.stat().st_size / 2**20, 2),
        "discriminator_mib": round(d_path.stat().st_size / 2**20, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_pass"), help="results folder ($OUT on the device)")
    p.add_argument("--gan-minutes", type=float, default=8.0, help="wall-clock budget of the GAN training")
    p.add_argument("--skip", default="", help="comma list of stages to skip: gan,kernel,gpu")
    p.add_argument("--smoke", action="store_true", help="CPU smoke test: tiny GAN, 2 steps, smoke kernel check")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    py = sys.executable
    log: dict = {"smoke": args.smoke, "stages": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    if "gan" not in skip:
        # the run folder (full checkpoint, ~1 GB training-set cache) stays off OUT: only its exports go back
        run = Path(tempfile.gettempdir()) / ("ganseg_gpu_pass_smoke" if args.smoke else "ganseg_gpu_pass_gan")
        cmd = [py, "-m", "ganseg.cli", "train-gan", "--out", str(run), "--ckpt-every", "500", "--sample-every", "100000"]
        if args.smoke:
            cmd += GAN_SMOKE + ["--device", "cpu"]
        else:
            cmd += GAN_128 + ["--minutes", str(args.gan_minutes), "--threads", str(os.cpu_count() or 1)]
        budget = 120 if args.smoke else args.gan_minutes * 60 + 150  # + rendering the training set, export
        if stage("gan", cmd, budget, log, env) and (run / "checkpoint.pt").is_file():
            gan_files(run, out / "gan", log)
    if "kernel" not in skip:
        cmd = [py, "benchmarks/gpu_kernel_check.py", "--out", str(out / "kernel")] + (["--smoke"] if args.smoke else [])
        stage("kernel", cmd, 60 if args.smoke else 240, log, env)  # includes the first nvcc build
    if "gpu" not in skip and not args.smoke:  # the UNet GPU rows (benchmarks/gpu.py has its own CPU smoke test)
        stage("gpu", [py, "benchmarks/gpu.py", "--out", str(out / "gpu")], 150, log, env)
    log["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    from ganseg.images import write_atomic

    write_atomic(out / "gpu_pass.json", (json.dumps(log, indent=1) + "\n").encode())
    print(f"[gpu_pass] results in {out}")
    return 0 if all(s["rc"] == 0 for s in log["stages"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
