"""Auto-shot synthesis throughput: generator alone vs generator + few-shot labelling, per head kind.

The path measured is `ganseg synthesize`'s own (`label_batch`: generate with feature taps, label
through the fused op, uint8 conversion). Heads are freshly initialized: their cost does not depend
on their weights. Generators: the bundled default (64², the default resolution) and a random
config-f-width 128² generator (labelled at 128²), to show how the ratio moves with generator size.

    python benchmarks/synthesis_throughput.py   # -> benchmarks/results/synthesis_throughput.{json,md,png}
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
    gens = {"64 (bundled default)": (load_generator(), 16, 128),
            "128 (config-f widths, random)": (Generator(GeneratorConfig(resolution=128, mapping_layers=2)), 8, 16)}
    rows = []
    for name, (G, batch, n) in gens.items():
        G.eval().requires_grad_(False)
        for kind in ("linear", "mlp", "cnn"):
            head = head_for(G, kind, 10, size=G.resolution).eval()
            r = synthesis_throughput(G, head, batch=batch, n=n)
            r.update(generator=name, head=kind, threads=torch.get_num_threads(),
                     overhead=r["generator_img_s"] / r["generator_and_head_img_s"] - 1)
            rows.append(r)
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomic(RESULTS / "synthesis_throughput.json", (json.dumps(rows, indent=1) + "\n").encode())
    lines = ["| generator | head | batch | CPU threads | generator img/s | generator + labelling img/s | "
             "labelling overhead |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['generator']} | {r['head']} | {r['batch']} | {r['threads']} | {r['generator_img_s']:.1f} | "
              f"{r['generator_and_head_img_s']:.1f} | {100 * r['overhead']:+.0f} % |" for r in rows]
    write_atomic(RESULTS / "synthesis_throughput.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = list(dict.fromkeys(r["generator"] for r in rows))
    fig, axes = plt.subplots(1, len(gens), figsize=(5 * len(gens), 3.5))
    for ax, g in zip(axes, gens):
        rs = [r for r in rows if r["generator"] == g]
        labels = ["generator"] + [f"+ {r['head']}" for r in rs]
        vals = [max(r["generator_img_s"] for r in rs)] + [r["generator_and_head_img_s"] for r in rs]
        ax.bar(labels, vals, color=["grey"] + ["C0"] * len(rs))
        ax.set_title(g)
        ax.set_ylabel("img/s")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_atomic(RESULTS / "synthesis_throughput.png", buf.getvalue())


if __name__ == "__main__":
    main()
