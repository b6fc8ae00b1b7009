"""Peak memory and time of a head step through the fused op vs the materialized reference.

Each measurement runs in a fresh subprocess, so one point's allocations never inflate the next
point's peak. Peak memory is the head step's own: the kernel's peak-RSS mark is reset
(/proc/self/clear_refs) after the generator features exist (both paths need them), and the step's
figure is the new peak minus the resident size before it.

Cases: generator features at 64² (bundled default), 128² and 256² (config-f widths), and 512² (a
1024² config-f generator's features, resized to 512²). Features come from a real forward pass of the
generator (`--features generator`, the default here) or, for `make bench`, from random tensors of
exactly the generator's feature shapes (`--features random`): the step's time and memory do not
depend on the values, and it saves the 1024² synthesis on CPU. A materialized point that would not
fit in the available memory is recorded as absent with the estimate, never run into swap or OOM.

    python benchmarks/fused_memory.py            # all cases -> benchmarks/results/fused_memory.{json,md,png}
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, absent, environment, environment_markdown, markdown_table, pyplot, save_figure,  # noqa: E402
                    write_json, write_text)

CASES = {  # name: (generator resolution, output size S, generator)
    "64 (default G)": (64, 64, "default"),
    "128 (config-f widths)": (128, 128, "random"),
    "256 (config-f widths)": (256, 256, "random"),
    "512 (1024 config-f resized)": (1024, 512, "random"),
}
BENCH_CASES = ("128 (config-f widths)", "256 (config-f widths)", "512 (1024 config-f resized)")
MATERIALIZED_OVERHEAD = 2.0  # measured peak / size of the float32 stack: 10978 MB / 5568 MB at 512²


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def available_mb() -> float:
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) / 1024


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark (Linux >= 4.0); return the current resident size in MB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _generator(case: str):
    from ganseg import Generator, GeneratorConfig, load_generator

    res, _, source = CASES[case]
    if source == "default":
        return load_generator()
    return Generator(GeneratorConfig(resolution=res, z_dim=512, w_dim=512, mapping_layers=2)).eval().requires_grad_(False)


def channels_of(case: str) -> int:
    """Total feature channels of a case's generator (from its config, without building it)."""
    return sum(c for _, _, c in _generator(case).feature_info)


def materialized_estimate_mb(case: str, channels: int) -> float:
    size = CASES[case][1]
    return channels * size * size * 4 / 2**20 * MATERIALIZED_OVERHEAD


def worker(case: str, method: str, kind: str, mode: str, features: str = "generator") -> dict:
    import torch
    import torch.nn.functional as F

    from ganseg.heads import head_for
    from ganseg.ops import resample_accumulate_reference

    torch.manual_seed(0)
    _, size, _ = CASES[case]
    G = _generator(case)
    if features == "random":  # the generator's exact feature shapes; values do not matter for the step
        feats = [torch.randn(1, c, r, r) for _, r, c in G.feature_info]
    else:
        with torch.no_grad():
            _, feats = G.synthesize_features(z=torch.randn(1, G.z_dim))
    head = head_for(G, kind, num_classes=10, size=size)
    if method == "materialized":  # same head, first layer through the reference op
        proj = head.project
        proj.forward = lambda fs, activation="none": resample_accumulate_reference(
            fs, proj.weight * proj.scales.repeat_interleave(proj.channels)[None], proj.bias, proj.size,
            proj.align_corners, activation)
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
    return {"case": case, "method": method, "head": kind, "mode": mode, "seconds": seconds, "features": features,
            "peak_mb": _status_mb("VmHWM") - base, "channels": sum(c for _, _, c in G.feature_info), "size": size,
            "status": "ok"}


def run_points(cases=tuple(CASES), heads=("linear", "cnn"), modes=("train", "infer"),
               methods=("fused", "materialized"), features: str = "generator", log=print) -> list[dict]:
    """One fresh process per (case, head, mode, method); materialized points that cannot fit in the
    available memory are absent rows with the estimate."""
    rows = []
    for case in cases:
        channels = None
        for kind in heads:
            for mode in modes:
                for method in methods:
                    keys = dict(case=case, method=method, head=kind, mode=mode, size=CASES[case][1], features=features)
                    if method == "materialized":
                        channels = channels or channels_of(case)
                        need, have = materialized_estimate_mb(case, channels), available_mb()
                        if need > 0.8 * have:
                            rows.append(absent(f"the materialized stack needs about {need / 1024:.1f} GB; "
                                               f"{have / 1024:.1f} GB available", **keys))
                            log(f"  fused-memory {case} {kind}/{mode} {method}: absent ({rows[-1]['reason']})")
                            continue
                    r = subprocess.run([sys.executable, __file__, "--worker", case, method, kind, mode,
                                        "--features", features], capture_output=True, text=True)
                    if r.returncode != 0:
                        rows.append(absent(f"worker failed: {r.stderr.strip().splitlines()[-1:]}", **keys))
                    else:
                        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                    row = rows[-1]
                    log(f"  fused-memory {case} {kind}/{mode} {method}: "
                        + (f"{row['peak_mb']:.0f} MB, {row['seconds']:.2f} s" if row["status"] == "ok"
                           else f"absent ({row['reason']})"))
    return rows


def pairs_of(rows: list[dict]) -> dict:
    pairs: dict = {}
    for r in rows:
        pairs.setdefault((r["case"], r["head"], r["mode"]), {})[r["method"]] = r
    return pairs


def table(rows: list[dict]) -> str:
    out = []
    for (case, head, mode), p in pairs_of(rows).items():
        f, m = p.get("fused", {}), p.get("materialized", {})
        ok_f, ok_m = f.get("status") == "ok", m.get("status") == "ok"
        out.append([case, head, mode, f["peak_mb"] if ok_f else None, m["peak_mb"] if ok_m else None,
                    f"{m['peak_mb'] / max(f['peak_mb'], 1):.1f}x" if ok_f and ok_m else "–",
                    f["seconds"] if ok_f else None, m["seconds"] if ok_m else None])
    text = markdown_table(["case", "head", "mode", "fused MB", "materialized MB", "memory ratio", "fused s",
                           "materialized s"], out, numeric=[False, False, False] + [True] * 5, digits=2)
    miss = [r for r in rows if r.get("status") != "ok"]
    if miss:
        text += "\nAbsent: " + "; ".join(f"{r['case']} {r['head']}/{r['mode']} {r['method']}: {r['reason']}"
                                         for r in miss) + "\n"
    return text


def plot(rows: list[dict], path: Path) -> None:
    """Peak memory vs output resolution, fused vs materialized, log scale (one line per head/mode)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    combos = list(dict.fromkeys((r["head"], r["mode"]) for r in rows))
    for i, (head, mode) in enumerate(combos):
        for method, style in (("fused", "-"), ("materialized", "--")):
            pts = sorted((r["size"], r["peak_mb"]) for r in rows if r["head"] == head and r["mode"] == mode
                         and r["method"] == method and r.get("status") == "ok")
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=f"C{i}", label=f"{method} ({head} head, {mode})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({r["size"] for r in rows})
    ax.set_xticks(sizes, [f"{s}²" for s in sizes])
    ax.set_xlabel("output resolution")
    ax.set_ylabel("peak memory of the feature step (MB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=4, metavar=("CASE", "METHOD", "HEAD", "MODE"))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--heads", default="linear,cnn")
    ap.add_argument("--modes", default="train,infer")
    ap.add_argument("--features", choices=["generator", "random"], default="generator")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, features=args.features)))
        return
    rows = run_points(args.cases.split(","), args.heads.split(","), args.modes.split(","), features=args.features)
    write_results(rows, Path(args.out))


def write_results(new_rows: list[dict], out: Path = RESULTS) -> None:
    """Merge with earlier results of other cases (a run may measure a subset), then write all."""
    path = out / "fused_memory.json"
    done = {r["case"] for r in new_rows}
    old = []
    if path.is_file():
        doc = json.loads(path.read_text())
        old = [{"status": "ok", **r} for r in (doc["rows"] if isinstance(doc, dict) else doc) if r["case"] not in done]
    rows = sorted(old + new_rows, key=lambda r: list(CASES).index(r["case"]))
    env = environment()
    write_json(path, {"environment": env, "rows": rows})
    write_text(out / "fused_memory.md", environment_markdown(env) + "\n" + table(rows))
    plot(rows, out / "fused_memory.png")
    print(table(rows))


if __name__ == "__main__":
    main()
