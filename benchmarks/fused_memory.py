"""Peak memory and time of a head step through the fused op vs the materialized reference.

Each measurement runs in a fresh subprocess. Peak memory is the head step's own: the kernel's
peak-RSS mark is reset (/proc/self/clear_refs) after the generator features exist (both paths need
them), and the step's figure is the new peak minus the resident size before it. Cases: generator features at 64² (bundled default), 128² and 256² (random generators
of config-f widths), and 512² (a random 1024² config-f generator, features resized to 512²).

    python benchmarks/fused_memory.py            # all cases -> benchmarks/results/fused_memory.{json,md,png}
"""
from __future__ import annotations

import argparse
import json
import gc
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CASES = {  # name: (generator resolution, output size S, generator)
    "64 (default G)": (64, 64, "default"),
    "128 (config-f widths)": (128, 128, "random"),
    "256 (config-f widths)": (256, 256, "random"),
    "512 (1024 config-f resized)": (1024, 512, "random"),
}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark (Linux >= 4.0); return the current resident size in MB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def worker(case: str, method: str, kind: str, mode: str) -> dict:
    import torch
    import torch.nn.functional as F

    from ganseg import Generator, GeneratorConfig, load_generator
    from ganseg.heads import head_for
    from ganseg.ops import resample_accumulate_reference

    torch.manual_seed(0)
    res, size, source = CASES[case]
    G = load_generator() if source == "default" else Generator(
        GeneratorConfig(resolution=res, z_dim=512, w_dim=512, mapping_layers=2)).eval().requires_grad_(False)
    with torch.no_grad():
        _, feats = G.synthesize(z=torch.randn(1, G.z_dim), return_features=True)
    head = head_for(G, kind, num_classes=10, size=size)
    if method == "materialized":  # same head, first layer through the reference op
        proj = head.project
        proj.forward = lambda fs: resample_accumulate_reference(
            fs, proj.weight * proj.scales.repeat_interleave(proj.channels)[None], proj.bias, proj.size,
            proj.align_corners)
    target = torch.randint(0, 10, (1, size, size))
    base = reset_peak_rss()
    t = time.perf_counter()
    if mode == "train":
        loss = F.cross_entropy(head(feats), target)
        loss.backward()
    else:
        with torch.no_grad():
            head(feats).argmax(1)
    seconds = time.perf_counter() - t
    return {"case": case, "method": method, "head": kind, "mode": mode, "seconds": seconds,
            "peak_mb": _status_mb("VmHWM") - base, "channels": sum(c for _, _, c in G.feature_info), "size": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=4, metavar=("CASE", "METHOD", "HEAD", "MODE"))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--heads", default="linear,cnn")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    rows = []
    for case in args.cases.split(","):
        for kind in args.heads.split(","):
            for mode in ("train", "infer"):
                for method in ("fused", "materialized"):
                    r = subprocess.run([sys.executable, __file__, "--worker", case, method, kind, mode],
                                       capture_output=True, text=True)
                    if r.returncode != 0:
                        print(r.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(f"worker failed: {case} {method} {kind} {mode}")
                    rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]))
    write_results(rows)


def write_results(new_rows: list[dict]) -> None:
    """Merge with earlier results of other cases (a run may measure a subset), then write all."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "fused_memory.json"
    done = {r["case"] for r in new_rows}
    old = [r for r in json.loads(path.read_text()) if r["case"] not in done] if path.is_file() else []
    rows = sorted(old + new_rows, key=lambda r: list(CASES).index(r["case"]))
    path.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| case | head | mode | fused MB | materialized MB | memory ratio | fused s | materialized s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    pairs = {}
    for r in rows:
        pairs.setdefault((r["case"], r["head"], r["mode"]), {})[r["method"]] = r
    for (case, head, mode), p in pairs.items():
        f, m = p["fused"], p["materialized"]
        lines.append(f"| {case} | {head} | {mode} | {f['peak_mb']:.0f} | {m['peak_mb']:.0f} | "
                     f"{m['peak_mb'] / max(f['peak_mb'], 1):.1f}x | {f['seconds']:.2f} | {m['seconds']:.2f} |")
    (RESULTS / "fused_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{c}\n{h}/{m}" for (c, h, m) in pairs]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [p["fused"]["peak_mb"] for p in pairs.values()], 0.4, label="fused")
    ax.bar([i + 0.2 for i in x], [p["materialized"]["peak_mb"] for p in pairs.values()], 0.4, label="materialized")
    ax.set_yscale("log")
    ax.set_ylabel("peak memory of the head step (MB)")
    ax.set_xticks(list(x), labels, fontsize=6, rotation=60)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "fused_memory.png", dpi=120)


if __name__ == "__main__":
    main()
