"""Closed-loop load against the real Triton server: ensemble vs BLS, and the scale knobs.

    python benchmarks/triton_load.py [--unet RUN] [--requests 200] [--out runs/serving_bench.json]

Builds a repository with both pipelines (`--pipeline both`) for the UNet (default: the bundled
default UNet; `--random` a randomly initialized UNet of the default architecture, which has the
same cost), starts `tritonserver` on free loopback ports, and for every (model, protocol,
concurrency) sends closed-loop batch-1 requests of one rendered 128² test face (PNG bytes, MASK
only), after a warm-up. Prints a markdown table (p50/p99 latency, img/s) and writes the figures as
JSON. `--sweep` also measures the batching knobs (queue delay, preferred sizes, instances, ORT
threads) that docs/serving.md chose the defaults from.

Measurement code (the load generator `latency_run`, `process_tree_rss`) lives here, in benchmarks/,
not in the installed package: tests and benchmarks import it from this folder.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ganseg.export.triton_repository import ServingConfig, build_repository
from ganseg.images import write_atomic
from ganseg.serving.client import _module, connect, infer_once, summarize
from ganseg.serving.server import TritonServer


def latency_run(url: str, protocol: str, model: str, data: bytes | np.ndarray, concurrency: int,
                requests: int, warmup: int = 10, overlay: bool = False, keep_latencies: bool = False) -> dict:
    """Closed-loop load: `concurrency` threads each sending batch-1 requests back to back until
    `requests` are done; p50/p99 latency (ms) and img/s over the timed part."""
    connect(url, protocol, model)
    mod = _module(protocol)
    lock = threading.Lock()
    state = {"left": warmup + requests, "lat": [], "t0": None, "errors": 0}
    start = threading.Barrier(concurrency)

    def worker():
        client = mod.InferenceServerClient(url)
        start.wait()
        while True:
            with lock:
                if state["left"] <= 0:
                    return
                state["left"] -= 1
                timed = state["left"] < requests
                if timed and state["t0"] is None:
                    state["t0"] = time.perf_counter()
            t = time.perf_counter()
            try:
                infer_once(client, protocol, model, data, overlay)
            except Exception:  # noqa: BLE001
                with lock:
                    state["errors"] += 1
                continue
            dt = time.perf_counter() - t
            if timed:
                with lock:
                    state["lat"].append(dt)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - (state["t0"] or time.perf_counter())
    out = summarize(state["lat"], wall)
    out["errors"] = state["errors"]
    out["wall_s"] = wall
    if keep_latencies:
        out["latencies_s"] = list(state["lat"])
    return out



def process_tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process plus all its descendants (the server and its stubs),
    from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        p = int(d.name)
        children.setdefault(int(fields[1]), []).append(p)  # fields[0] is the state, [1] the parent
        rss[p] = int(fields[21]) * page
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


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
