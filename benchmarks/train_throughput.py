"""GAN training throughput: img/s of `ganseg train-gan` steps (G step + D step, lazy R1 amortized).

The step timed is the trainer's own (`GANTrainer.train_step`: DiffAugment, style mixing, EMA, the
optimizers), on random uint8 images, so the data set is not rendered. A step with the R1 term
(every `r1_every`-th) costs about twice a plain one, so both are timed and the figure is the
amortized rate: batch * r1_every / (t_R1 + (r1_every - 1) * t_plain). Each time is the median over
repeats after warm-up steps, fenced by device synchronizations (benchmarks/common.py).

Rows: 64² with the trainer's default widths, 64² with the bundled default generator's widths, 128²
with the widths the GPU pass trains; CPU with --precision auto (bf16 where the CPU has it) and fp32,
and a CUDA row per resolution when a GPU is present. `RECORDED` holds the figures measured on the
code before the speed work (d6fa92d), with the command that gave them: the "before" of the note.

    python benchmarks/train_throughput.py [--quick] [--threads N] [--out DIR]  # -> results/train_throughput.{json,md,png}
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, device_sync, environment, environment_markdown, markdown_table, measure, pyplot,  # noqa: E402
                    save_figure, write_json, write_text)

# Measured before this benchmark existed, on the trainer of commit d6fa92d (fp32 on CPU, DiffAugment
# through F.grid_sample, per-parameter EMA, .item() every step), 2 CPU cores shared with other jobs.
RECORDED = [
    {"label": "before (d6fa92d)", "resolution": 64, "channels": [256, 256, 256, 128, 64], "batch": 16,
     "threads": 2, "device": "cpu", "precision": "fp32", "steps_per_s": 0.390, "img_per_s": 6.2,
     "clock": "wall, load average 0.3-3.0", "date": "2026-11-30",
     "command": "GANTrainer(TrainGANConfig(resolution=64, channels=..., batch=16)); 3 warm-up + 16 timed "
                "train_step calls (R1 in 1 of them), torch.set_num_threads(2)"},
    {"label": "before (d6fa92d)", "resolution": 64, "channels": [256, 256, 128, 64, 32], "batch": 16,
     "threads": 2, "device": "cpu", "precision": "fp32", "steps_per_s": 0.521, "img_per_s": 8.3,
     "clock": "wall, load average 0.3-3.0", "date": "2026-11-30", "command": "as above"},
]
# The same trainer of d6fa92d against this one, interleaved in one process (so both saw the same
# load, here 5-6 on 2 cores): 2 rounds of 16 steps each (R1 in 1 of 16), after 2 warm-up steps.
_AB = ("old trainer + generator module loaded from `git show d6fa92d:...` beside this tree's, "
       "both GANTrainer(TrainGANConfig(resolution=64, channels=[256,256,256,128,64], batch=16)), "
       "rounds alternate old/new, median of 2 rounds")
RECORDED += [
    {"label": label, "resolution": 64, "channels": [256, 256, 256, 128, 64], "batch": 16, "threads": threads,
     "device": "cpu", "precision": prec, "steps_per_s": sps, "img_per_s": 16 * sps,
     "clock": "wall, interleaved A/B, load average 5-6", "date": "2026-11-30", "command": _AB}
    for label, threads, prec, sps in [("A/B: before (d6fa92d)", 1, "fp32", 0.171), ("A/B: after", 1, "auto", 0.349),
                                      ("A/B: before (d6fa92d)", 2, "fp32", 0.040), ("A/B: after", 2, "auto", 0.088)]]


@dataclass
class Point:
    name: str
    resolution: int
    channels: list[int]
    batch: int
    device: str = "cpu"
    precision: str = "auto"
    threads: int | None = None


def default_points(quick: bool = False) -> list[Point]:
    if quick:
        return [Point("tiny 16²", 16, [16, 16, 8], 4, threads=1)]
    pts = [Point("64², trainer default widths", 64, [256, 256, 256, 128, 64], 16, threads=2),
           Point("64², trainer default widths", 64, [256, 256, 256, 128, 64], 16, precision="fp32", threads=2),
           Point("64², bundled default widths", 64, [256, 256, 128, 64, 32], 16, threads=1),
           Point("128², GPU-pass widths", 128, [256, 256, 256, 256, 128, 64], 16, threads=2)]
    if torch.cuda.is_available():
        pts += [Point("64², trainer default widths", 64, [256, 256, 256, 128, 64], 64, device="cuda"),
                Point("128², GPU-pass widths", 128, [256, 256, 256, 256, 128, 64], 64, device="cuda")]
    return pts


def train_throughput(p: Point, warmup: int = 2, repeats: int = 4, r1_repeats: int = 2) -> dict:
    """Amortized img/s of train_step for one point (see the module docstring)."""
    from ganseg.training.train_gan import GANTrainer, TrainGANConfig

    if p.threads:
        torch.set_num_threads(p.threads)
    cfg = TrainGANConfig(resolution=p.resolution, channels=p.channels, batch=p.batch, precision=p.precision)
    with tempfile.TemporaryDirectory(prefix="ganseg-train-bench-") as tmp:
        t = GANTrainer(cfg, Path(tmp), p.device)
    images = torch.randint(0, 256, (4 * p.batch, p.resolution, p.resolution, 3), dtype=torch.uint8)
    sync = device_sync(p.device)

    def step(r1: bool):
        def run():
            t.step = 0 if r1 else 1  # the step count decides whether R1 is due; fix it per timing
            t.train_step(images)
        return run

    plain = measure(step(False), warmup=warmup, repeats=repeats, items=p.batch, sync=sync)
    with_r1 = measure(step(True), warmup=1, repeats=r1_repeats, items=p.batch, sync=sync)
    k = cfg.r1_every
    seconds = with_r1.median + (k - 1) * plain.median
    return {"name": p.name, "resolution": p.resolution, "channels": p.channels, "batch": p.batch,
            "device": p.device, "precision": p.precision, "bf16": t.amp, "threads": torch.get_num_threads(),
            "plain_step_ms": 1e3 * plain.median, "r1_step_ms": 1e3 * with_r1.median, "r1_every": k,
            "steps_per_s": k / seconds, "img_per_s": k * p.batch / seconds,
            "repeats": [plain.summary()["repeats"], with_r1.summary()["repeats"]]}


def measure_rows(points: list[Point], log=print, **kw) -> list[dict]:
    rows = []
    for p in points:
        r = train_throughput(p, **kw)
        rows.append(r)
        log(f"  train {r['name']} {r['device']} {r['precision']}{' (bf16)' if r['bf16'] else ''} "
            f"{r['threads']} thread(s): {r['steps_per_s']:.3f} steps/s, {r['img_per_s']:.1f} img/s")
    return rows


def table(rows: list[dict], recorded: list[dict] = RECORDED) -> str:
    body = [[r["name"], "this code", r["device"], r["precision"] + (" → bf16" if r["bf16"] else ""), r["batch"],
             r["threads"], r["plain_step_ms"], r["r1_step_ms"], r["steps_per_s"], r["img_per_s"]] for r in rows]
    body += [[f"{r['resolution']}², widths {','.join(map(str, r['channels']))}", r["label"], r["device"],
              r["precision"], r["batch"], r["threads"], None, None, r["steps_per_s"], r["img_per_s"]]
             for r in recorded]
    return markdown_table(["point", "code", "device", "precision", "batch", "CPU threads", "plain step ms",
                           "R1 step ms", "steps/s (R1 amortized)", "img/s"], body,
                          numeric=[False, False, False, False, True, True, True, True, True, True], digits=2)


def plot(rows: list[dict], path: Path, recorded: list[dict] = RECORDED) -> None:
    plt = pyplot()
    labels = [f"{r['name']}\n{r['device']} {r['precision']} {r['threads']}t" for r in rows]
    labels += [f"{r['resolution']}² {r['label']}\n{r['device']} {r['precision']} {r['threads']}t" for r in recorded]
    vals = [r["img_per_s"] for r in rows] + [r["img_per_s"] for r in recorded]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(vals)), 4))
    ax.bar(range(len(vals)), vals, color=["C0"] * len(rows) + ["grey"] * len(recorded))
    ax.set_xticks(range(len(vals)), labels, fontsize=6, rotation=30, ha="right")
    ax.set_ylabel("img/s (train-gan steps)")
    ax.set_yscale("log")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one tiny 16² point: seconds (the test suite's run)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for every CPU point (on a shared, oversubscribed machine 1 measures "
                         "the code, 2 mostly the OpenMP contention)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    kw = {"warmup": 1, "repeats": 2, "r1_repeats": 1} if args.quick else {}
    points = default_points(args.quick)
    if args.threads:
        points = [replace(p, threads=args.threads) if p.device == "cpu" else p for p in points]
        points = list({(p.name, p.precision, p.device, p.threads): p for p in points}.values())
    rows = measure_rows(points, **kw)
    env = environment()
    out = Path(args.out)
    write_json(out / "train_throughput.json", {"environment": env, "rows": rows, "recorded": RECORDED})
    write_text(out / "train_throughput.md", environment_markdown(env) + "\n" + table(rows))
    plot(rows, out / "train_throughput.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
