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


def random_default_unet(folder: Path) -> Path:
    """A randomly initialized UNet with the default training architecture (same cost as trained)."""
    import torch

    from ganseg.labels import CLASS_NAMES
    from ganseg.training.train_unet import UNetTrainConfig
    from ganseg.unet import UNet, UNetConfig, save_unet

    t = UNetTrainConfig()
    torch.manual_seed(0)
    unet = UNet(UNetConfig(num_classes=len(CLASS_NAMES), width=t.width, depth=t.depth)).eval()
    path = folder / "unet.safetensors"
    save_unet(unet, path, list(CLASS_NAMES), extra={"resolution": 64})
    return path


def measure(repo: Path, models: list[str], data: bytes, requests: int, protocols=("http", "grpc"),
            concurrencies=(1, 8)) -> list[dict]:
    rows = []
    with TritonServer(repo) as server:
        for model in models:
            for protocol in protocols:
                url = server.http_url if protocol == "http" else server.grpc_url
                for c in concurrencies:
                    n = requests if c > 1 else max(50, requests // 2)
                    r = latency_run(url, protocol, model, data, concurrency=c, requests=n, warmup=4 * c)
                    row = {"model": model, "protocol": protocol, "concurrency": c, **r}
                    rows.append(row)
                    print(f"| {model} | {protocol} | {c} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                          f"{r['img_per_s']:.1f} | {r['errors']} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet", default=None, help="UNet run folder / .safetensors (default: bundled default)")
    p.add_argument("--random", action="store_true", help="a random UNet of the default architecture")
    p.add_argument("--requests", type=int, default=200, help="timed requests per row at concurrency > 1")
    p.add_argument("--sweep", action="store_true", help="also sweep the batching knobs (BLS, gRPC)")
    p.add_argument("--no-table", action="store_true", help="skip the ensemble-vs-BLS table (with --sweep)")
    p.add_argument("--out", default="runs/serving_bench.json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ganseg-bench-"))
    unet = random_default_unet(tmp) if args.random else args.unet
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
        variants = {
            "defaults": ServingConfig(),
            "queue delay 0 us": ServingConfig(queue_delay_us=0),
            "queue delay 5000 us": ServingConfig(queue_delay_us=5000),
            "ort_threads 1": ServingConfig(ort_threads=1),
            "ort_threads 1, 2 UNet instances": ServingConfig(unet_instances=2, ort_threads=1),
            "2 entry instances": ServingConfig(instances=2),
        }
        for name, cfg in variants.items():
            repo = build_repository(tmp / "sweep", onnx=onnx, pipeline="bls", cfg=cfg)
            print(f"-- {name}")
            rows = measure(repo, ["ganseg_segment"], data, args.requests, protocols=("grpc",), concurrencies=(1, 8))
            result["sweep"] += [{"variant": name, **r} for r in rows]
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write_atomic(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
