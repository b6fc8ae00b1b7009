"""Ensemble vs BLS on the real Triton server: batch-1 requests, HTTP and gRPC, concurrency 1 and 8.

    python -m ganseg.serving.bench [--unet RUN] [--requests 200] [--out runs/serving_bench.json]

Builds a repository with both pipelines (`--pipeline both`) for the UNet (default: the bundled
default UNet; `--random` a randomly initialized UNet of the default architecture, which has the
same cost), starts `tritonserver` on free loopback ports, and for every (model, protocol,
concurrency) sends closed-loop batch-1 requests of one rendered 128² test face (PNG bytes, MASK
only), after a warm-up. Prints a markdown table (p50/p99 latency, img/s) and writes the figures as
JSON. `--sweep` also measures the batching knobs (queue delay, preferred sizes, instances, ORT
threads) that docs/serving.md chose the defaults from.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from ganseg.images import write_atomic
from ganseg.serving.client import latency_run
from ganseg.serving.repository import ServingConfig, build_repository
from ganseg.serving.server import TritonServer


def sample_png(res: int = 128) -> bytes:
    from PIL import Image

    from ganseg.faces import render_faces, split_seeds

    images, _ = render_faces(split_seeds("test", 1), res)
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    return buf.getvalue()


def random_default_unet(folder: Path, tiny: bool = False) -> Path:
    """A randomly initialized UNet with the default training architecture (same cost as trained),
    or a tiny one (width 8, depth 3)."""
    import torch

    from ganseg.labels import CLASS_NAMES
    from ganseg.training.train_unet import UNetTrainConfig
    from ganseg.unet import UNet, UNetConfig, save_unet

    t = UNetTrainConfig()
    torch.manual_seed(0)
    width, depth = (8, 3) if tiny else (t.width, t.depth)
    unet = UNet(UNetConfig(num_classes=len(CLASS_NAMES), width=width, depth=depth)).eval()
    path = folder / "unet.safetensors"
    save_unet(unet, path, list(CLASS_NAMES), extra={"resolution": 64})
    return path


def measure(repo: Path, models: list[str], data: bytes, requests: int, protocols=("http", "grpc"),
            concurrencies=(1, 8), rounds: int = 4) -> list[dict]:
    """Rows of p50/p99/img/s per (model, protocol, concurrency). The models are measured in
    alternating rounds (A B A B ...) so that a shared machine's load drifts hit them alike; the
    latencies of all rounds are pooled, img/s is over the summed wall time."""
    from ganseg.serving.client import summarize

    rows = []
    with TritonServer(repo) as server:
        for protocol in protocols:
            url = server.http_url if protocol == "http" else server.grpc_url
            for c in concurrencies:
                n = requests if c > 1 else max(32, requests // 2)
                pooled = {m: {"lat": [], "wall": 0.0, "errors": 0} for m in models}
                for m in models:  # warm-up (connections, first batches)
                    latency_run(url, protocol, m, data, concurrency=c, requests=2 * c, warmup=0)
                for _ in range(rounds):
                    for m in models:
                        r = latency_run(url, protocol, m, data, concurrency=c, requests=max(c, n // rounds),
                                        warmup=0, keep_latencies=True)
                        pooled[m]["lat"] += r["latencies_s"]
                        pooled[m]["wall"] += r["wall_s"]
                        pooled[m]["errors"] += r["errors"]
                for m in models:
                    r = summarize(pooled[m]["lat"], pooled[m]["wall"])
                    rows.append({"model": m, "protocol": protocol, "concurrency": c, **r, "errors": pooled[m]["errors"]})
                    print(f"| {m} | {protocol} | {c} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                          f"{r['img_per_s']:.1f} | {pooled[m]['errors']} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet", default=None, help="UNet run folder / .safetensors (default: bundled default)")
    p.add_argument("--random", action="store_true", help="a random UNet of the default architecture")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny random UNet (width 8, depth 3): shows the serving overhead, not the net")
    p.add_argument("--requests", type=int, default=200, help="timed requests per row at concurrency > 1")
    p.add_argument("--sweep", action="store_true", help="also sweep the batching knobs (BLS, gRPC)")
    p.add_argument("--no-table", action="store_true", help="skip the ensemble-vs-BLS table (with --sweep)")
    p.add_argument("--variants", nargs="*", default=None, help="--sweep: only these variants (by name)")
    p.add_argument("--out", default="runs/serving_bench.json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ganseg-bench-"))
    unet = random_default_unet(tmp, tiny=args.tiny) if (args.random or args.tiny) else args.unet
    data = sample_png()
    onnx = tmp / "unet.onnx"
    from ganseg.export.onnx_export import export_unet

    export_unet(unet, onnx)
    result = {"machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start",
              "unet": str(unet or "bundled default"), "image": "one 128x128 rendered test face, PNG",
              "defaults": ServingConfig().__dict__, "rows": [], "sweep": []}
    print("| model | protocol | concurrency | p50 ms | p99 ms | img/s | errors |\n|---|---|---|---|---|---|---|")
    if not args.no_table:
        repo = build_repository(tmp / "repo", onnx=onnx, pipeline="both")
        result["rows"] = measure(repo, ["ganseg_segment", "ganseg_segment_ensemble"], data, args.requests)
    if args.sweep:
        variants = {  # defaults: ort_threads 1, queue delay 500 us, preferred [4, 8]
            "defaults": ServingConfig(),
            "queue delay 0 us": ServingConfig(queue_delay_us=0),
            "queue delay 2000 us": ServingConfig(queue_delay_us=2000),
            "queue delay 5000 us": ServingConfig(queue_delay_us=5000),
            "no preferred sizes": ServingConfig(preferred_batch=[]),
            "preferred [8]": ServingConfig(preferred_batch=[8]),
            "ort_threads 2": ServingConfig(ort_threads=2),
            "2 UNet instances": ServingConfig(unet_instances=2),
            "2 entry instances": ServingConfig(instances=2),
            "2 UNet + 2 entry instances": ServingConfig(instances=2, unet_instances=2),
        }
        if args.variants:
            variants = {k: v for k, v in variants.items() if k in args.variants}
        for name, cfg in variants.items():
            repo = build_repository(tmp / "sweep", onnx=onnx, pipeline="bls", cfg=cfg)
            print(f"-- {name}")
            rows = measure(repo, ["ganseg_segment"], data, args.requests, protocols=("grpc",), concurrencies=(1, 8),
                           rounds=1)
            result["sweep"] += [{"variant": name, **r} for r in rows]
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_atomic(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
