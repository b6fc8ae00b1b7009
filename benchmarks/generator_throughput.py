"""Generator throughput on this machine: images/s, with and without feature taps.

Configs: the bundled default (64²) and config-f-width generators (ganseg's GeneratorConfig default:
512 channels up to 64², then 256, 128, ...; z = w = 512, 8 mapping layers) at 128² and 256².
Medians of timed calls after a warm-up call, synchronized on a GPU (benchmarks/common.py).

    python benchmarks/generator_throughput.py   # -> benchmarks/results/generator_throughput.{json,md}
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, device_sync, environment, environment_markdown, markdown_table, measure,  # noqa: E402
                    write_json, write_text)


def images_per_second(G, batch: int, features: bool, repeats: int = 3, warmup: int = 1) -> float:
    z = torch.randn(batch, G.z_dim, device=G.device)
    fn = G.synthesize_features if features else G.synthesize

    def call():
        with torch.no_grad():
            fn(z=z)
    return measure(call, warmup=warmup, repeats=repeats, items=batch, sync=device_sync(G.device)).items_per_s


def main() -> None:
    from ganseg import Generator, GeneratorConfig, load_generator

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
            print(rows[-1])
    env = environment()
    write_json(RESULTS / "generator_throughput.json", {"environment": env, "rows": rows})
    md = markdown_table(["generator", "params (M)", "batch", "CPU threads", "img/s", "img/s with features"],
                        [[r["generator"], r["params_M"], r["batch"], r["threads"], r["img_s"], r["img_s_with_features"]]
                         for r in rows])
    write_text(RESULTS / "generator_throughput.md", environment_markdown(env) + "\n" + md)
    print(md)


if __name__ == "__main__":
    main()
