"""Auto-shot synthesis throughput: generator alone vs generator + few-shot labelling, per head kind.

The path measured is `ganseg synthesize`'s own (`label_batch`: generate with feature taps, label
through the fused op, uint8 conversion). Heads are freshly initialized: their cost does not depend
on their weights. Generators: the bundled default (64², the default resolution) and a random
config-f-width 128² generator (labelled at 128²), to show how the ratio moves with generator size.
Each figure is the median of interleaved repeats (single runs on a shared CPU vary by ±30 %), after
a warm-up batch, with a device synchronization around every timed span (benchmarks/common.py).

    python benchmarks/synthesis_throughput.py [--quick]   # -> results/synthesis_throughput.{json,md,png}

Measured with 1 and 2 torch threads (the machine's 2 cores); the slow 128² generator with 2 only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, device_sync, environment, environment_markdown, markdown_table, median_of, pyplot,  # noqa: E402
                    save_figure, write_json, write_text)

KEYS = ("generator_img_s", "generator_and_head_img_s")


@torch.no_grad()
def synthesis_throughput(G, head, batch: int = 16, n: int = 64, truncation: float = 1.0) -> dict[str, float]:
    """img/s of the generator alone (features returned) and of generator + labelling, after a warm-up
    batch of each; both over the same `n` seeds in batches of `batch`."""
    from ganseg.latents import z_from_seeds
    from ganseg.synthesize import SynthConfig, label_batch

    dev = G.device
    sync = device_sync(dev)
    cfg = SynthConfig(n=n, batch=batch, truncation=truncation)
    chunks = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
    zs = [z_from_seeds(c, G.z_dim).to(dev) for c in chunks]

    def gen(z):
        return G.synthesize_features(z=z, truncation_psi=truncation, noise_mode="const")

    gen(zs[0]), label_batch(G, head, chunks[0], cfg)  # warm-up (allocator, kernels, cuDNN choice)
    sync()
    t0 = time.perf_counter()
    for z in zs:
        gen(z)
    sync()
    t1 = time.perf_counter()
    for c in chunks:
        label_batch(G, head, c, cfg)  # the real per-batch path, incl. uint8 conversion and copies
    sync()
    t2 = time.perf_counter()
    return {"generator_img_s": n / (t1 - t0), "generator_and_head_img_s": n / (t2 - t1), "batch": batch, "n": n}


def measure_rows(plan, heads=("linear", "mlp", "cnn"), repeats: int = 3, log=print) -> list[dict]:
    """plan: [(threads, name, G, batch, n)]; one row per (plan entry, head kind), medians of `repeats`."""
    from ganseg.heads import head_for

    rows = []
    for threads, name, G, batch, n in plan:
        torch.set_num_threads(threads)  # 1: one process per core (`--shard i/n`); 2: one process, whole CPU
        G.eval().requires_grad_(False)
        for kind in heads:
            head = head_for(G, kind, 10, size=G.resolution).eval()
            runs = [synthesis_throughput(G, head, batch=batch, n=n) for _ in range(repeats)]
            r = median_of(runs, KEYS)
            r.update(batch=batch, n=n, repeats=repeats, generator=name, head=kind, threads=torch.get_num_threads(),
                     overhead=r["generator_img_s"] / r["generator_and_head_img_s"] - 1)
            rows.append(r)
            log(f"  synthesis {name} {kind} {threads} thread(s): generator {r['generator_img_s']:.1f} img/s, "
                f"+ labelling {r['generator_and_head_img_s']:.1f} img/s")
    return rows


def table(rows: list[dict]) -> str:
    return markdown_table(
        ["generator", "head", "batch", "CPU threads", "generator img/s", "generator + labelling img/s",
         "labelling overhead (median)"],
        [[r["generator"], r["head"], r["batch"], r["threads"], r["generator_img_s"], r["generator_and_head_img_s"],
          f"{100 * r['overhead']:+.0f} %"] for r in rows], numeric=[False, False, True, True, True, True, True])


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    gens = list(dict.fromkeys((r["generator"], r["threads"]) for r in rows))
    fig, axes = plt.subplots(1, len(gens), figsize=(4 * len(gens), 3.5), squeeze=False)
    for ax, (g, t) in zip(axes[0], gens):
        rs = [r for r in rows if r["generator"] == g and r["threads"] == t]
        labels = ["generator"] + [f"+ {r['head']}" for r in rs]
        vals = [max(r["generator_img_s"] for r in rs)] + [r["generator_and_head_img_s"] for r in rs]
        ax.bar(labels, vals, color=["grey"] + ["C0"] * len(rs))
        ax.set_title(f"{g}\n{t} thread(s)", fontsize=9)
        ax.set_ylabel("img/s")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def default_plan(quick: bool = False):
    from ganseg import Generator, GeneratorConfig, load_generator

    torch.manual_seed(0)
    g64 = load_generator()
    if quick:
        return [(2, "64 (bundled default)", g64, 16, 64)]
    g128 = Generator(GeneratorConfig(resolution=128, mapping_layers=2))
    return [(1, "64 (bundled default)", g64, 16, 256), (2, "64 (bundled default)", g64, 16, 256),
            (2, "128 (config-f widths, random)", g128, 8, 16)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64² generator, 2 threads only")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    rows = measure_rows(default_plan(args.quick))
    env = environment()
    out = Path(args.out)
    write_json(out / "synthesis_throughput.json", {"environment": env, "rows": rows})
    write_text(out / "synthesis_throughput.md", environment_markdown(env) + "\n" + table(rows))
    plot(rows, out / "synthesis_throughput.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
