"""Closed-loop load against the real Triton server: ensemble vs BLS, and the scale knobs.

    python benchmarks/triton_load.py [--unet RUN] [--requests 200] [--out runs/serving_bench.json]

Builds a repository with both pipelines (`--pipeline both`) for the UNet (default: the bundled
default UNet; `--random` a randomly initialized UNet of the default architecture, which has the
same cost), starts `tritonserver` on free loopback ports, and for every (model, protocol,
concurrency) sends closed-loop batch-1 requests of one rendered 128² test face (PNG bytes, MASK
only), after a warm-up. Prints a markdown table (p50/p99 latency, img/s) and writes the figures as
JSON. `--knobs` instead measures Triton's scale knobs (instance groups, dynamic batching and its
queue delay, the rate limiter, and ganseg's inline UNet) at concurrency 1..16 on a 128² PNG and a
12 MP JPEG: the rows docs/serving.md chose the shipped defaults from (results/triton_knobs.md).

Measurement code (the load generator `latency_run`, `process_tree_rss`) lives here, in benchmarks/,
not in the installed package: tests and benchmarks import it from this folder.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
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
                requests: int, warmup: int = 10, overlay: bool = False, keep_latencies: bool = False,
                mask: str = "raw") -> dict:
    """Closed-loop load: `concurrency` threads each sending batch-1 requests back to back until
    `requests` are done; p50/p99 latency (ms) and img/s over the timed part. Each request is what
    `ganseg client` sends (`infer_once`): `mask` "lowres" asks for MASK_LOWRES + MASK_SIZE and
    expands them to the full-size mask inside the timed call, "raw" asks for MASK."""
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
                infer_once(client, protocol, model, data, overlay, mask=mask)
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
    from /proc (Linux), read by the server module's one /proc reader."""
    from ganseg.serving.server import proc_stats

    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for p, fields in proc_stats().items():
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


# --------------------------------------------------------------------------------------------
# Triton's scale knobs at concurrency 1..16

KNOB_CONCURRENCY = (1, 2, 4, 8, 16)
RATE_LIMIT_ARGS = ["--rate-limit=execution_count", "--rate-limit-resource=ganseg_cpu:2"]  # 2 cores


def knob_variants() -> dict[str, tuple[ServingConfig, list[str]]]:
    """name -> (repository config, extra tritonserver flags). The previous shipped defaults first;
    every other row changes one or two knobs from a BLS or inline-UNet base."""
    old = dict(queue_delay_us=500, preferred_batch=[4, 8], instances=2, unet_instances=1)
    inline = dict(inline_unet=True, queue_delay_us=0, instances=2)
    return {
        "BLS, 2 entry, delay 500 us (old defaults)": (ServingConfig(**old, inline_unet=False), []),
        "BLS, 2 entry, delay 0": (ServingConfig(**{**old, "queue_delay_us": 0}, inline_unet=False), []),
        "BLS, 2 entry + 2 UNet, delay 0": (ServingConfig(**{**old, "queue_delay_us": 0, "unet_instances": 2},
                                                         inline_unet=False), []),
        "inline, 1 entry, delay 0": (ServingConfig(**{**inline, "instances": 1}), []),
        "inline, 2 entry, delay 0": (ServingConfig(**inline), []),
        "inline, 4 entry, delay 0": (ServingConfig(**{**inline, "instances": 4}), []),
        "inline, 2 entry, delay 500 us": (ServingConfig(**{**inline, "queue_delay_us": 500}), []),
        "inline, 2 entry, no dynamic batching": (ServingConfig(**inline, dynamic_batching=False), []),
        "inline, 4 entry, no dynamic batching": (ServingConfig(**{**inline, "instances": 4}, dynamic_batching=False), []),
        "inline, 4 entry, rate limiter (2 executions)": (ServingConfig(**{**inline, "instances": 4}, rate_limiter=True),
                                                         RATE_LIMIT_ARGS),
    }


def knob_sweep(onnx: Path, work: Path, inputs: dict[str, bytes], concurrency=KNOB_CONCURRENCY,
               variants: dict | None = None, per_level: int = 24, rounds: int = 2, log=print) -> list[dict]:
    """Every variant's server runs at once (idle ones cost no CPU), and each (input, concurrency)
    level is measured round-robin over the variants, `rounds` times, so a shared machine's load
    drifts hit all of them alike. Requests are what `ganseg client` sends by default (gRPC, one
    photo, MASK_LOWRES + MASK_SIZE + OVERLAY, the mask expanded to full size in the timed call)."""
    import contextlib

    variants = variants or knob_variants()
    rows = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for i, (name, (cfg, flags)) in enumerate(variants.items()):
            repo = build_repository(work / f"knob{i}", onnx=onnx, pipeline="bls", cfg=cfg)
            servers[name] = stack.enter_context(TritonServer(repo, extra_args=flags, log_path=work / f"knob{i}.log"))
        log(f"  {len(servers)} servers ready; load {os.getloadavg()[0]:.1f}")
        for input_name, data in inputs.items():
            for c in concurrency:
                pooled = {n: {"lat": [], "wall": 0.0, "errors": 0} for n in servers}
                for name, srv in servers.items():  # warm-up: connections, the batcher's first batches
                    latency_run(srv.grpc_url, "grpc", "ganseg_segment", data, c, 2 * c, warmup=0, overlay=True,
                                mask="lowres")
                for _ in range(rounds):
                    for name, srv in servers.items():
                        r = latency_run(srv.grpc_url, "grpc", "ganseg_segment", data, c, max(per_level, 4 * c) // rounds,
                                        warmup=0, overlay=True, keep_latencies=True, mask="lowres")
                        pooled[name]["lat"] += r["latencies_s"]
                        pooled[name]["wall"] += r["wall_s"]
                        pooled[name]["errors"] += r["errors"]
                for name in servers:
                    r = summarize(pooled[name]["lat"], pooled[name]["wall"])
                    rows.append({"variant": name, "input": input_name, "concurrency": c, **r,
                                 "errors": pooled[name]["errors"], "config": variants[name][0].__dict__,
                                 "server_flags": variants[name][1]})
                    log(f"  {input_name:15s} c={c:2d} {name:45s} p50 {r['p50_ms']:7.1f} ms  {r['img_per_s']:6.1f} img/s")
    return rows


def knob_markdown(rows: list[dict]) -> str:
    """One table per input: a row per variant, img/s (p50 ms) per concurrency."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import markdown_table

    text = ""
    for input_name in dict.fromkeys(r["input"] for r in rows):
        sub = [r for r in rows if r["input"] == input_name]
        levels = sorted({r["concurrency"] for r in sub})
        names = list(dict.fromkeys(r["variant"] for r in sub))
        best = {c: max(r["img_per_s"] for r in sub if r["concurrency"] == c) for c in levels}
        cells = []
        for n in names:
            line = [n]
            for c in levels:
                r = next(x for x in sub if x["variant"] == n and x["concurrency"] == c)
                mark = "**" if r["img_per_s"] >= 0.95 * best[c] else ""
                line.append(f"{mark}{r['img_per_s']:.1f}{mark} ({r['p50_ms']:.1f})")
            cells.append(line)
        text += f"\n{input_name}: img/s (p50 ms) at each concurrency; bold: within 5 % of the best of its column\n\n"
        text += markdown_table(["variant", *[f"c={c}" for c in levels]], cells, numeric=[False] + [True] * len(levels))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--unet", default=None, help="UNet run folder / .safetensors (default: bundled default)")
    p.add_argument("--random", action="store_true", help="a random UNet of the default architecture")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny random UNet (width 8, depth 3): shows the serving overhead, not the net")
    p.add_argument("--requests", type=int, default=200, help="timed requests per row at concurrency > 1")
    p.add_argument("--knobs", action="store_true",
                   help="instead: Triton's scale knobs (instances, dynamic batching, queue delay, rate limiter, "
                        "inline UNet) at concurrency 1..16 -> results/triton_knobs.{json,md}")
    p.add_argument("--per-level", type=int, default=24, help="--knobs: timed requests per variant and level (min 4 x c)")
    p.add_argument("--rounds", type=int, default=2, help="--knobs: round-robin passes per level")
    p.add_argument("--concurrency", default=",".join(map(str, KNOB_CONCURRENCY)), help="--knobs: levels")
    p.add_argument("--variants", nargs="*", default=None, help="--knobs: only these variants (by name)")
    p.add_argument("--out", default=None, help="JSON file (default runs/serving_bench.json; --knobs: results/triton_knobs.json)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ganseg-bench-"))
    unet = random_default_unet(tmp, tiny=args.tiny) if (args.random or args.tiny) else args.unet
    onnx = tmp / "unet.onnx"
    from ganseg.export.onnx_export import export_unet

    export_unet(unet, onnx)
    if args.knobs:
        return _knobs_main(args, onnx, tmp, str(unet or "bundled default UNet"))
    data = sample_png()
    result = {"machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start",
              "unet": str(unet or "bundled default"), "image": "one 128x128 rendered test face, PNG",
              "defaults": ServingConfig().__dict__, "rows": []}
    print("| model | protocol | concurrency | p50 ms | p99 ms | img/s | errors |\n|---|---|---|---|---|---|---|")
    repo = build_repository(tmp / "repo", onnx=onnx, pipeline="both", cfg=ServingConfig(inline_unet=False))
    result["rows"] = measure(repo, ["ganseg_segment", "ganseg_segment_ensemble"], data, args.requests)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out = args.out or "runs/serving_bench.json"
    write_atomic(out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {out}")
    return 0


def _knobs_main(args, onnx: Path, tmp: Path, about: str) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import RESULTS, environment, environment_markdown, write_json, write_text
    from inprocess import real_size_inputs

    photos = real_size_inputs()
    inputs = {k: photos[k] for k in ("128² PNG", "4000x3000 JPEG")}
    variants = knob_variants()
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants}
    env0 = environment()
    rows = knob_sweep(onnx, tmp, inputs, [int(c) for c in args.concurrency.split(",")], variants, args.per_level,
                      args.rounds)
    env = environment(load_avg_at_start=env0["load_avg_1_5_15"])
    out = Path(args.out) if args.out else RESULTS / "triton_knobs.json"
    write_json(out, {"environment": env, "unet": about, "rows": rows})
    picked = f" --variants {' '.join(repr(v) for v in variants)}" if args.variants else ""
    md = (environment_markdown(env) + f"\nUNet: {about}. Command: `python benchmarks/triton_load.py --knobs"
          f" --per-level {args.per_level} --rounds {args.rounds}{picked}`. Each request: gRPC, one photo, MASK_LOWRES + MASK_SIZE + OVERLAY "
          f"(what `ganseg client` sends), the mask expanded to full size inside the timed call; all variants' "
          f"servers up at once and measured round-robin per level. Rate limiter rows run the server with "
          f"`{' '.join(RATE_LIMIT_ARGS)}`.\n" + knob_markdown(rows))
    write_text(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
