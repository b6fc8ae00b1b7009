"""Wall time to train a 1-shot head of each kind (default steps) on CPU.

Generators: the bundled default (64²) and a random 128² generator with config-f widths (the
issue's 128² target: a 1-shot CNN head in <= 2 minutes). One training run per point: a run is
minutes of steady work, so warm-up effects are a negligible part of it.

    python benchmarks/fewshot_speed.py   # -> benchmarks/results/fewshot_speed.{json,md}
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, environment_markdown, markdown_table, write_json, write_text  # noqa: E402


def main() -> None:
    from ganseg import Generator, GeneratorConfig, load_generator
    from ganseg.shots import Shots
    from ganseg.headfit import HeadTrainConfig, train_head

    torch.manual_seed(0)
    gens = {"64 (default G)": load_generator(),
            "128 (config-f widths, random)": Generator(GeneratorConfig(resolution=128, mapping_layers=2)).eval()}
    rows = []
    for name, G in gens.items():
        G.requires_grad_(False)
        ws = G.map(torch.randn(1, G.z_dim))
        mask = torch.randint(0, 10, (1, G.resolution, G.resolution))
        for kind in ("linear", "mlp", "cnn"):
            cfg = HeadTrainConfig(kind=kind, steps=600)  # the figure docs/fewshot.md quotes: 600 steps
            t = time.perf_counter()
            train_head(G, Shots(ws, mask, [str(i) for i in range(10)]), cfg, progress=False)
            rows.append({"generator": name, "head": kind, "steps": cfg.steps,
                         "seconds": time.perf_counter() - t, "threads": torch.get_num_threads()})
            print(rows[-1])
    env = environment()
    write_json(RESULTS / "fewshot_speed.json", {"environment": env, "rows": rows})
    md = markdown_table(["generator", "head", "steps", "seconds (1 shot)", "CPU threads"],
                        [[r["generator"], r["head"], r["steps"], r["seconds"], r["threads"]] for r in rows])
    write_text(RESULTS / "fewshot_speed.md", environment_markdown(env) + "\n" + md)
    print(md)


if __name__ == "__main__":
    main()
