"""Generator throughput on this machine's CPU: images/s, with and without feature taps.

Configs: the bundled default (64²) and config-f-width generators (ganseg's GeneratorConfig default:
512 channels up to 64², then 256, 128, ...; z = w = 512, 8 mapping layers) at 128² and 256².

    python benchmarks/generator_throughput.py   # -> benchmarks/results/generator_throughput.{json,md}
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ganseg import Generator, GeneratorConfig, load_generator

RESULTS = Path(__file__).parent / "results"


def images_per_second(G, batch: int, features: bool, repeats: int = 3) -> float:
    z = torch.randn(batch, G.z_dim)
    with torch.no_grad():
        G.synthesize(z=z, return_features=features)  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            G.synthesize(z=z, return_features=features)
    return batch * repeats / (time.perf_counter() - t)


def main() -> None:
    torch.manual_seed(0)
    gens = {"64 (bundled default)": load_generator(),
            "128 (config-f widths)": Generator(GeneratorConfig(resolution=128)).eval(),
            "256 (config-f widths)": Generator(GeneratorConfig(resolution=256)).eval()}
    rows = []
    for name, G in gens.items():
        for batch in (1, 16):
            rows.append({"generator": name, "batch": batch, "threads": torch.get_num_threads(),
                         "params_M": sum(p.numel() for p in G.parameters()) / 1e6,
                         "img_s": images_per_second(G, batch, False),
                         "img_s_with_features": images_per_second(G, batch, True)})
            print(json.dumps(rows[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generator_throughput.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| generator | params (M) | batch | CPU threads | img/s | img/s with features |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['generator']} | {r['params_M']:.1f} | {r['batch']} | {r['threads']} | {r['img_s']:.1f} | "
              f"{r['img_s_with_features']:.1f} |" for r in rows]
    (RESULTS / "generator_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
