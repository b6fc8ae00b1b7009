"""Auto-shot synthesis throughput: generator alone vs generator + few-shot labelling, per head kind.

The path measured is `ganseg synthesize`'s own (`label_batch`: generate with feature taps, label
through the fused op, uint8 conversion). Heads are freshly initialized: their cost does not depend
on their weights. Generators: the bundled default (64², the default resolution) and a random
config-f-width 128² generator (labelled at 128²), to show how the ratio moves with generator size.

    python benchmarks/synthesis_throughput.py   # -> benchmarks/results/synthesis_throughput.{json,md,png}

Measured with 1 and 2 torch threads (the machine's 2 cores); the slow 128² generator with 2 only.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ganseg import Generator, GeneratorConfig, load_generator
from ganseg.heads import head_for
from ganseg.images import write_atomic
from ganseg.synthesize import synthesis_throughput

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    torch.manual_seed(0)
    gens = {"64 (bundled default)": (load_generator(), 16, 256),
            "128 (config-f widths, random)": (Generator(GeneratorConfig(resolution=128, mapping_layers=2)), 8, 16)}
    plan = [(1, "64 (bundled default)"), (2, "64 (bundled default)"), (2, "128 (config-f widths, random)")]
    rows = []
    for threads, name in plan:
        G, batch, n = gens[name]
        torch.set_num_threads(threads)  # 1: one process per core (`--shard i/n`); 2: one process, whole CPU
        G.eval().requires_grad_(False)
        for kind in ("linear", "mlp", "cnn"):
            head = head_for(G, kind, 10, size=G.resolution).eval()
            # median of 3 interleaved measurements: single runs on a shared CPU vary by ±30 %
            runs = [synthesis_throughput(G, head, batch=batch, n=n) for _ in range(3)]
            r = {k: sorted(x[k] for x in runs)[1] for k in ("generator_img_s", "generator_and_head_img_s")}
            r.update(batch=batch, n=n, repeats=3, generator=name, head=kind, threads=torch.get_num_threads(),
                     overhead=r["generator_img_s"] / r["generator_and_head_img_s"] - 1)
            rows.append(r)
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "synthesis_throughput.json", (json.dumps(rows, indent=1) + "\n").encode())
    lines = ["| generator | head | batch | CPU threads | generator img/s | generator + labelling img/s | "
             "labelling overhead (median of 3) |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['generator']} | {r['head']} | {r['batch']} | {r['threads']} | {r['generator_img_s']:.1f} | "
              f"{r['generator_and_head_img_s']:.1f} | {100 * r['overhead']:+.0f} % |" for r in rows]
    write_atomic(RESULTS / "synthesis_throughput.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = list(dict.fromkeys((r["generator"], r["threads"]) for r in rows))
    fig, axes = plt.subplots(1, len(gens), figsize=(4 * len(gens), 3.5))
    for ax, (g, t) in zip(axes, gens):
        rs = [r for r in rows if r["generator"] == g and r["threads"] == t]
        labels = ["generator"] + [f"+ {r['head']}" for r in rs]
        vals = [max(r["generator_img_s"] for r in rs)] + [r["generator_and_head_img_s"] for r in rs]
        ax.bar(labels, vals, color=["grey"] + ["C0"] * len(rs))
        ax.set_title(f"{g}\n{t} thread(s)", fontsize=9)
        ax.set_ylabel("img/s")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_atomic(RESULTS / "synthesis_throughput.png", buf.getvalue())


if __name__ == "__main__":
    main()
