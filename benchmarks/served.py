"""Served UNet latency and throughput, measured by NVIDIA's own `perf_analyzer` against the real server.

Why perf_analyzer: it is what Triton users measure with, so these are the figures they would get
themselves — client-side p50/p90/p95/p99 latency and infer/s per concurrency level, and the
server-side split (queue, compute input/infer/output) from its `-f` CSV. The tool comes from its own
environment (`make perf-analyzer`, tools/perf_analyzer/), since only the old tritonclient==2.40.0
wheel carries the binary.

What is measured (`ganseg export triton --pipeline both`, one server, loopback):
- the image-bytes entry point `ganseg_segment` (IMAGE = one encoded PNG per request) and the raw
  entry point `ganseg_segment_raw` (IMAGE = UINT8 HWC pixels), each as the single BLS model (the
  default) and as the ensemble pre -> UNet -> post (`*_ensemble`), over HTTP and gRPC, at
  concurrency 1/2/4/8/16, batch-1 requests (the server's dynamic batcher groups them);
- the network alone, `ganseg_unet` (float32 [B,3,S,S] -> logits), at client batch 1/4/8/16 and
  concurrency 1: the same work as the in-process `onnxruntime` baseline at the same batch.
Around every perf_analyzer call the server's statistics endpoint is read, which gives each
composing model's compute time (pre, UNet, post) and the average batch the batcher formed: the
pre/post-processing share of served time comes from there.

    python benchmarks/served.py [--unet RUN]   # -> results/served.{json,md} + served_perf_analyzer.csv
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, RESULTS, absent, environment, environment_markdown, markdown_table, write_json, write_text  # noqa: E402

PERF_ANALYZER = ROOT / "tools" / "perf_analyzer" / "perf_analyzer"
CONCURRENCY = (1, 2, 4, 8, 16)
UNET_BATCHES = (1, 4, 8, 16)
PROTOCOLS = ("http", "grpc")
# entry model -> (input kind, pipeline variant); names from ganseg.serving.repository
ENTRIES = {"ganseg_segment": ("bytes", "bls"), "ganseg_segment_ensemble": ("bytes", "ensemble"),
           "ganseg_segment_raw": ("raw", "bls"), "ganseg_segment_raw_ensemble": ("raw", "ensemble")}
UNET_MODEL = "ganseg_unet"
PRE_MODELS = {"bytes": "ganseg_pre", "raw": "ganseg_pre_raw"}
POST_MODEL = "ganseg_post"
US = 1e-3  # perf_analyzer's CSV is in microseconds; we report milliseconds


@dataclass
class PerfSettings:
    """perf_analyzer's measurement: count windows of at least `requests_per_window` requests (and two
    per concurrent client), so a slow machine still gets enough samples per point; with an open
    stability threshold it stops after the 3 windows it always needs, and reports over all 3."""
    requests_per_window: int = 10
    max_trials: int = 4
    stability_pct: int = 1000
    timeout_s: float = 180.0
    warmup_requests: int = 4

    def args(self, concurrency: int) -> list[str]:
        n = max(self.requests_per_window, 2 * concurrency)
        return ["--measurement-mode", "count_windows", "--measurement-request-count", str(n),
                "-r", str(self.max_trials), "-s", str(self.stability_pct)]


# --------------------------------------------------------------------------------------------
# The tool

def perf_analyzer_path() -> Path:
    return Path(os.environ.get("PERF_ANALYZER", PERF_ANALYZER))


def perf_analyzer_version(tool: Path | None = None) -> tuple[str | None, str]:
    """(version, "") when the tool runs, else (None, why not)."""
    tool = tool or perf_analyzer_path()
    if not Path(tool).exists():
        return None, f"{tool} not found: run `make perf-analyzer`"
    try:
        r = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{tool} does not run ({exc}): run `make perf-analyzer`"
    m = re.search(r"Perf Analyzer Version (\S+)", r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        return None, f"perf_analyzer does not run ({tail[0][:200]}): run `make perf-analyzer`"
    return m.group(1), ""


# --------------------------------------------------------------------------------------------
# Input data

def input_files(png: bytes, out_dir: Path) -> dict[str, Path]:
    """perf_analyzer --input-data JSON files: the PNG as one BYTES item (b64 of the 4-byte length
    prefix + bytes, perf_analyzer's STRING format) and its decoded pixels as raw UINT8 HWC."""
    from ganseg.images import decode_rgb

    img = decode_rgb(png)
    item = base64.b64encode(struct.pack("<I", len(png)) + png).decode()
    files = {
        "bytes": {"data": [{"IMAGE": {"content": {"b64": item}, "shape": [1]}}]},
        "raw": {"data": [{"IMAGE": {"content": {"b64": base64.b64encode(img.tobytes()).decode()},
                                    "shape": list(img.shape)}}]},
    }
    out = {}
    for kind, doc in files.items():
        out[kind] = out_dir / f"input_{kind}.json"
        out[kind].write_text(json.dumps(doc))
    return out


# --------------------------------------------------------------------------------------------
# Parsing

def parse_csv(text: str) -> list[dict]:
    """perf_analyzer -f CSV -> rows in ms (latency columns) and infer/s."""
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        if not r.get("Concurrency"):
            continue
        g = lambda k: float(r[k]) if r.get(k) not in (None, "") else None  # noqa: E731
        row = {"concurrency": int(float(r["Concurrency"])), "infer_per_s": g("Inferences/Second"),
               **{f"p{p}_ms": g(f"p{p} latency") * US for p in (50, 90, 95, 99) if g(f"p{p} latency") is not None},
               "client_send_ms": g("Client Send") * US, "network_ms": g("Network+Server Send/Recv") * US,
               "server_queue_ms": g("Server Queue") * US, "server_compute_input_ms": g("Server Compute Input") * US,
               "server_compute_infer_ms": g("Server Compute Infer") * US,
               "server_compute_output_ms": g("Server Compute Output") * US, "client_recv_ms": g("Client Recv") * US}
        row["avg_latency_ms"] = sum(row[k] for k in ("client_send_ms", "network_ms", "server_queue_ms",
                                                     "server_compute_input_ms", "server_compute_infer_ms",
                                                     "server_compute_output_ms", "client_recv_ms"))
        rows.append(row)
    return rows


def request_count(stdout: str) -> int | None:
    """Client-side requests in the reported (last) measurement."""
    counts = re.findall(r"Request count:\s*(\d+)", stdout)
    return int(counts[-1]) if counts else None


# --------------------------------------------------------------------------------------------
# Server statistics

def model_stats(http_url: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=10) as r:
        doc = json.loads(r.read())
    return {m["name"]: m for m in doc.get("model_stats", [])}


def stats_delta(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per model, over the interval: requests, executions, inferences (images), average batch and the
    average per-request queue/compute times in ms."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        ai, bi = a.get("inference_stats", {}), b.get("inference_stats", {})
        req = ai.get("success", {}).get("count", 0) - bi.get("success", {}).get("count", 0)
        if req <= 0:
            continue
        execs = a.get("execution_count", 0) - b.get("execution_count", 0)
        inf = a.get("inference_count", 0) - b.get("inference_count", 0)
        d = {"requests": req, "executions": execs, "inferences": inf,
             "avg_batch": inf / execs if execs else None}
        for k in ("queue", "compute_input", "compute_infer", "compute_output"):
            ns = ai.get(k, {}).get("ns", 0) - bi.get(k, {}).get("ns", 0)
            d[f"{k}_ms"] = ns / req / 1e6
        d["compute_ms"] = d["compute_input_ms"] + d["compute_infer_ms"] + d["compute_output_ms"]
        out[name] = d
    return out


def prepost_split(entry: str, kind: str, variant: str, delta: dict[str, dict]) -> dict:
    """Pre/post-processing vs network time per request, from the server's own statistics.

    Ensemble: pre and post are models of their own. BLS: the entry model's compute includes its
    blocking call to ganseg_unet, so pre+post = entry compute - the UNet call's time; both per
    execution (every request of a batch is charged its execution's duration; the UNet sees one
    request per BLS execution)."""
    unet = delta.get(UNET_MODEL)
    if unet is None:
        return {}
    extra: dict = {"entry_avg_batch": (delta.get(entry) or {}).get("avg_batch")}
    if variant == "ensemble":
        pre, post = delta.get(PRE_MODELS[kind]), delta.get(POST_MODEL)
        if not pre or not post:
            return {}
        prepost = pre["compute_ms"] + post["compute_ms"]
        net = unet["compute_ms"]
        # an ensemble has no queue of its own (perf_analyzer's "Server Queue" is 0): its steps queue,
        # and the batches that matter are the steps' (the ensemble itself counts 1 per request)
        extra = {"entry_avg_batch": pre["avg_batch"], "post_avg_batch": post["avg_batch"],
                 "composing_queue_ms": pre["queue_ms"] + unet["queue_ms"] + post["queue_ms"]}
    else:
        e = delta.get(entry)
        if not e:
            return {}
        net = unet["compute_ms"]
        prepost = max(0.0, e["compute_ms"] - net - unet["queue_ms"])
    return {"prepost_ms": prepost, "net_ms": net, "prepost_share_of_compute": prepost / (prepost + net)
            if prepost + net > 0 else None, "unet_avg_batch": unet["avg_batch"], **extra}


# --------------------------------------------------------------------------------------------
# Running

@dataclass
class Point:
    model: str
    protocol: str
    concurrency: int
    batch: int = 1
    input_kind: str | None = None   # "bytes" | "raw" | None (random float tensor)
    variant: str = "net"            # "bls" | "ensemble" | "net"

    @property
    def key(self) -> dict:
        return {"model": self.model, "protocol": self.protocol, "concurrency": self.concurrency,
                "batch": self.batch, "input": self.input_kind or "float tensor", "variant": self.variant}


def default_points(protocols=PROTOCOLS, concurrency=CONCURRENCY, unet_batches=UNET_BATCHES,
                   entries: dict = ENTRIES, short_concurrency=(1, 8)) -> list[Point]:
    """The grid `make bench` measures: the full concurrency sweep for the image-bytes entry point
    (BLS and ensemble) over both protocols; the raw entry points at concurrency 1 and 8 (enough for
    their latency at rest and the p99/p50 ratio under load, and it keeps `make bench` within 15
    minutes on 2 cores); the network alone at each client batch. `short_concurrency=None`: the full
    sweep everywhere."""
    pts = []
    for m, (kind, variant) in entries.items():
        levels = concurrency if kind == "bytes" or short_concurrency is None else \
            [c for c in concurrency if c in short_concurrency]
        pts += [Point(m, p, c, 1, kind, variant) for p in protocols for c in levels]
    pts += [Point(UNET_MODEL, "grpc", 1, b) for b in unet_batches]
    return pts


def wait_idle(http_url: str, timeout: float = 30.0) -> None:
    """Until the server's counters stop moving: requests a killed or failed client left in flight
    must not run into the next measurement."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        now = {n: (m.get("inference_count"), m.get("execution_count")) for n, m in model_stats(http_url).items()}
        if now == last:
            return
        last = now
        time.sleep(0.3)


def warm_up(server, models: list[tuple[str, str | None]], inputs: dict[str, Path], tool: Path,
            settings: PerfSettings) -> None:
    """A few unrecorded requests per model (ONNX Runtime's first runs allocate; stubs import lazily)."""
    for model, kind in models:
        cmd = [str(tool), "-m", model, "-u", server.grpc_url, "-i", "grpc", "--concurrency-range", "2",
               "--measurement-mode", "count_windows", "--measurement-request-count", str(settings.warmup_requests),
               "-r", "4", "-s", "1000"]
        if kind:
            cmd += ["--input-data", str(inputs[kind])]
        subprocess.run(cmd, capture_output=True, text=True, timeout=settings.timeout_s)
    wait_idle(server.http_url)


def run_point(pt: Point, server, inputs: dict[str, Path], settings: PerfSettings, csv_dir: Path,
              tool: Path, retries: int = 1) -> tuple[dict, str]:
    """One perf_analyzer call (retried once after the server is idle again); returns (row, its CSV text)."""
    row, text = _run_point(pt, server, inputs, settings, csv_dir, tool)
    for _ in range(retries):
        if row["status"] == "ok":
            break
        wait_idle(server.http_url)
        row, text = _run_point(pt, server, inputs, settings, csv_dir, tool)
    wait_idle(server.http_url)
    return row, text


def _run_point(pt: Point, server, inputs: dict[str, Path], settings: PerfSettings, csv_dir: Path,
               tool: Path) -> tuple[dict, str]:
    url = server.grpc_url if pt.protocol == "grpc" else server.http_url
    csv_path = csv_dir / f"{pt.model}-{pt.protocol}-c{pt.concurrency}-b{pt.batch}.csv"
    cmd = [str(tool), "-m", pt.model, "-u", url, "-i", pt.protocol, "-b", str(pt.batch),
           "--concurrency-range", str(pt.concurrency), *settings.args(pt.concurrency), "-f", str(csv_path)]
    if pt.input_kind:
        cmd += ["--input-data", str(inputs[pt.input_kind])]
    if pt.variant == "bls":
        cmd += ["--bls-composing-models", UNET_MODEL]
    csv_path.unlink(missing_ok=True)
    before = model_stats(server.http_url)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        return absent(f"perf_analyzer did not finish in {settings.timeout_s:.0f} s", **pt.key), ""
    wall = time.perf_counter() - t0
    after = model_stats(server.http_url)
    if r.returncode != 0 or not csv_path.is_file():
        lines = [ln for ln in (r.stderr + r.stdout).strip().splitlines() if ln.strip() and "WARNING" not in ln]
        why = " ".join(lines[-2:])[:300]
        return absent(f"perf_analyzer exit {r.returncode}: {why}", **pt.key), ""
    text = csv_path.read_text()
    parsed = parse_csv(text)
    if not parsed:
        return absent("perf_analyzer wrote no measurement", **pt.key), text
    # perf_analyzer's infer/s already counts every image of a batch-B request (B inferences)
    row = {**pt.key, "status": "ok", **parsed[-1], "img_per_s": parsed[-1]["infer_per_s"],
           "requests_measured": request_count(r.stdout), "wall_s": wall}
    delta = stats_delta(before, after)
    row["server_stats"] = delta
    if pt.variant != "net":
        row.update(prepost_split(pt.model, pt.input_kind, pt.variant, delta))
        if row.get("prepost_ms") is not None and row.get("avg_latency_ms"):
            row["prepost_share_of_latency"] = min(1.0, row["prepost_ms"] / row["avg_latency_ms"])
    else:
        row["unet_avg_batch"] = (delta.get(UNET_MODEL) or {}).get("avg_batch")
    return row, text


def merge_csv(parts: list[tuple[dict, str]]) -> str:
    """One CSV for the whole run: perf_analyzer's own columns, prefixed by what was measured."""
    out = io.StringIO()
    w = None
    for key, text in parts:
        for r in csv.DictReader(io.StringIO(text)):
            if w is None:
                w = csv.DictWriter(out, ["Model", "Protocol", "Batch", "Variant", "Input", *r.keys()])
                w.writeheader()
            w.writerow({"Model": key["model"], "Protocol": key["protocol"], "Batch": key["batch"],
                        "Variant": key["variant"], "Input": key["input"], **r})
    return out.getvalue()


def build_repo(unet_file: Path, repo: Path):
    from ganseg.serving.repository import ServingConfig, build_repository

    cfg = ServingConfig()
    build_repository(repo, unet=unet_file, pipeline="both", cfg=cfg)
    return cfg


def served_rows(unet_file: Path, png: bytes, work: Path, *, points: list[Point] | None = None,
                settings: PerfSettings | None = None, log: Callable[[str], None] = print) -> dict:
    """Build a repository for the UNet file, serve it, run every point. Returns the section dict:
    rows (absent ones with their reason), the merged CSV text, server and tool versions."""
    settings = settings or PerfSettings()
    points = points if points is not None else default_points()
    tool = perf_analyzer_path()
    version, why = perf_analyzer_version(tool)
    if version is None:
        return {"rows": [absent(why, **p.key) for p in points], "csv": "", "perf_analyzer": None,
                "reason": why}
    try:
        from ganseg.serving.server import TritonServer
    except ImportError as exc:
        why = f"ganseg.serving.server not importable ({exc})"
        return {"rows": [absent(why, **p.key) for p in points], "csv": "", "perf_analyzer": version, "reason": why}
    repo, csv_dir = work / "repo", work / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_repo(unet_file, repo)
    inputs = input_files(png, work)
    rows, parts = [], []
    t0 = time.perf_counter()
    with TritonServer(repo, log_path=work / "server.log") as server:
        start_s = time.perf_counter() - t0
        with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=10) as r:
            meta = json.loads(r.read())
        log(f"  tritonserver {meta.get('version')} ready in {start_s:.1f} s; perf_analyzer {version}")
        warm_up(server, list(dict.fromkeys((p.model, p.input_kind) for p in points)), inputs, tool, settings)
        for pt in points:
            row, text = run_point(pt, server, inputs, settings, csv_dir, tool)
            rows.append(row)
            if text:
                parts.append((pt.key, text))
            if row["status"] == "ok":
                log(f"  served {pt.model:28s} {pt.protocol:4s} c={pt.concurrency:2d} b={pt.batch:2d}: "
                    f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  {row['img_per_s']:7.1f} img/s")
            else:
                log(f"  served {pt.model} {pt.protocol} c={pt.concurrency} b={pt.batch}: absent ({row['reason']})")
        server_rss = server.rss_bytes() if hasattr(server, "rss_bytes") else None
    return {"rows": rows, "csv": merge_csv(parts), "perf_analyzer": version, "tritonserver": meta.get("version"),
            "server_start_s": start_s, "serving_config": cfg.__dict__, "settings": settings.__dict__,
            "server_rss_mb": server_rss / 2**20 if server_rss else None}


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    out = markdown_table(
        ["model", "protocol", "batch", "concurrency", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "img/s",
         "queue ms", "compute ms", "pre/post share", "avg server batch"],
        [[r["model"], r["protocol"], r["batch"], r["concurrency"], r["p50_ms"], r["p90_ms"], r["p95_ms"], r["p99_ms"],
          r["img_per_s"], r.get("composing_queue_ms", r["server_queue_ms"]),
          r["server_compute_input_ms"] + r["server_compute_infer_ms"] + r["server_compute_output_ms"],
          f"{100 * r['prepost_share_of_compute']:.0f} %" if r.get("prepost_share_of_compute") is not None else "–",
          r.get("entry_avg_batch") or r.get("unet_avg_batch")] for r in ok],
        numeric=[False, False] + [True] * 9 + [True, True])
    out += ("\nqueue ms: the server's queue time per request (for an ensemble, its steps' queues summed); "
            "compute ms: the entry model's compute per request, from perf_analyzer's CSV (for an ensemble, "
            "its steps'); pre/post share: pre+post compute ÷ (pre+post+network) from the server's statistics; "
            "avg server batch: images per execution the dynamic batcher formed (for an ensemble, its "
            "preprocessing step's).\n")
    miss = [r for r in rows if r.get("status") != "ok"]
    if miss:
        out += "\nAbsent: " + "; ".join(sorted({f"{r['model']} {r['protocol']} c={r['concurrency']}: {r['reason']}"
                                                for r in miss})[:12]) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    from inprocess import bench_unet, sample_png

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", default=None, help="UNet run folder or file (default: the bundled one)")
    ap.add_argument("--requests-per-window", type=int, default=PerfSettings.requests_per_window)
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from ganseg.unet import save_unet

    unet, about = bench_unet(args.unet)
    with tempfile.TemporaryDirectory(prefix="ganseg-served-") as tmp:
        tmp = Path(tmp)
        save_unet(unet, tmp / "unet.safetensors", unet.class_names, extra=dict(unet.meta))
        pts = default_points(protocols=args.protocols.split(","),
                             concurrency=[int(c) for c in args.concurrency.split(",")])
        sec = served_rows(tmp / "unet.safetensors", sample_png(), tmp, points=pts,
                          settings=PerfSettings(requests_per_window=args.requests_per_window))
    env = environment(tritonserver=sec.get("tritonserver"), perf_analyzer=sec.get("perf_analyzer"))
    out = Path(args.out)
    csv_text = sec.pop("csv")
    if csv_text:
        write_text(out / "served_perf_analyzer.csv", csv_text)
    write_json(out / "served.json", {"environment": env, "unet": about, **sec})
    write_text(out / "served.md", environment_markdown(env) + f"\nUNet: {about}.\n\n" + table(sec["rows"]))
    print(table(sec["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
