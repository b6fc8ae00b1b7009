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
    python benchmarks/served.py --real-sizes   # -> results/realsize.{json,md}: camera-size photos, served
                                               #    as `ganseg client` sends them vs in-process, the goals
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, RESULTS, absent, environment, environment_markdown, markdown_table, write_json, write_text  # noqa: E402
from triton_load import process_tree_rss  # noqa: E402

PERF_ANALYZER = ROOT / "tools" / "perf_analyzer" / "perf_analyzer"
CONCURRENCY = (1, 2, 4, 8, 16)
UNET_BATCHES = (1, 4, 8, 16)
PROTOCOLS = ("http", "grpc")
# entry model -> (input kind, pipeline variant); names from ganseg.export.triton_repository
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
    files = {
        "bytes": _bytes_doc(png),
        "raw": {"data": [{"IMAGE": {"content": {"b64": base64.b64encode(img.tobytes()).decode()},
                                    "shape": list(img.shape)}}]},
    }
    out = {}
    for kind, doc in files.items():
        out[kind] = out_dir / f"input_{kind}.json"
        out[kind].write_text(json.dumps(doc))
    return out


def _bytes_doc(data: bytes) -> dict:
    """perf_analyzer input data: one encoded photo as the BYTES item of IMAGE."""
    item = base64.b64encode(struct.pack("<I", len(data)) + data).decode()
    return {"data": [{"IMAGE": {"content": {"b64": item}, "shape": [1]}}]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


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
    input_kind: str | None = None   # "bytes" | "raw" | a real-size input's name | None (random float tensor)
    variant: str = "net"            # "bls" | "ensemble" | "net"
    outputs: str | None = None      # real-size rows: "MASK" (request parameter overlay_max_side=0) or "MASK + OVERLAY"

    @property
    def key(self) -> dict:
        key = {"model": self.model, "protocol": self.protocol, "concurrency": self.concurrency,
               "batch": self.batch, "input": self.input_kind or "float tensor", "variant": self.variant}
        return {**key, "outputs": self.outputs} if self.outputs else key


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



def run_points(points, server, inputs, settings, csv_dir, tool, rows: list, parts: list, log,
               label: Callable, figures: Callable) -> None:
    """Measure each point in turn: its row into `rows`, perf_analyzer's CSV text into `parts`, one log
    line per point (`label(point)`, then `figures(row)` or why it is absent)."""
    for pt in points:
        row, text = run_point(pt, server, inputs, settings, csv_dir, tool)
        rows.append(row)
        if text:
            parts.append((pt.key, text))
        if row["status"] == "ok":
            log(f"  served {label(pt)}: {figures(row)}")
        else:
            log(f"  served {label(pt)}: absent ({row['reason']})")

def _run_point(pt: Point, server, inputs: dict[str, Path], settings: PerfSettings, csv_dir: Path,
               tool: Path) -> tuple[dict, str]:
    url = server.grpc_url if pt.protocol == "grpc" else server.http_url
    tag = f"-{_slug(pt.input_kind)}-{_slug(pt.outputs)}" if pt.outputs else ""
    csv_path = csv_dir / f"{pt.model}-{pt.protocol}-c{pt.concurrency}-b{pt.batch}{tag}.csv"
    cmd = [str(tool), "-m", pt.model, "-u", url, "-i", pt.protocol, "-b", str(pt.batch),
           "--concurrency-range", str(pt.concurrency), *settings.args(pt.concurrency), "-f", str(csv_path)]
    if pt.input_kind:
        cmd += ["--input-data", str(inputs[pt.input_kind])]
    if pt.variant == "bls":
        cmd += ["--bls-composing-models", UNET_MODEL]
    if pt.outputs == "MASK":  # perf_analyzer asks for every output; this parameter turns OVERLAY off
        cmd += ["--request-parameter", "overlay_max_side:0:int"]
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
    from ganseg.export.triton_repository import ServingConfig, build_repository

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
        run_points(points, server, inputs, settings, csv_dir, tool, rows, parts, log,
                   lambda pt: f"{pt.model:28s} {pt.protocol:4s} c={pt.concurrency:2d} b={pt.batch:2d}",
                   lambda row: f"p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  {row['img_per_s']:7.1f} img/s")
        server_rss = process_tree_rss(server.pid)
    return {"rows": rows, "csv": merge_csv(parts), "perf_analyzer": version, "tritonserver": meta.get("version"),
            "server_start_s": start_s, "serving_config": cfg.__dict__, "settings": settings.__dict__,
            "server_rss_mb": server_rss / 2**20 if server_rss else None}


# --------------------------------------------------------------------------------------------
# Real photo sizes: served (what `ganseg client` sends) and in-process side by side, against the goals

REAL_OUTPUTS = ("MASK", "MASK + OVERLAY")
REAL_GOALS = {"12mp_over_128_c1": 4.0, "12mp_img_s_c4": 15.0, "http_over_inprocess_c1": 0.85,
              "served_equal_inprocess": 1.0}
SMALL, HD, BIG = "128² PNG", "1920x1080 JPEG", "4000x3000 JPEG"
ENTRY_BLS = "ganseg_segment"
MODES = ("in-process", "gRPC c=1", "HTTP c=1")


def _inprocess_call(sess, spec, data: bytes, overlay: bool, stages: dict[str, list[float]]) -> Callable[[], None]:
    """One photo through the served code in-process (`ganseg.pipeline.pre` -> ONNX Runtime ->
    `ganseg.pipeline.post`), to the same deliverable as a served request: the mask at the photo's
    own size (+ the OVERLAY JPEG)."""
    from ganseg import pipeline as P

    preview = P.PREVIEW_MAX_SIDE if overlay else 0

    def call():
        t0 = time.perf_counter()
        b = P.pre([data], spec.input_size, preview=preview)
        t1 = time.perf_counter()
        logits = sess.run([spec.output_name], {spec.input_name: b.x})[0]
        t2 = time.perf_counter()
        P.post(logits, b, spec.palette)
        t3 = time.perf_counter()
        for k, x, y in (("pre", t0, t1), ("net", t1, t2), ("post", t2, t3)):
            stages[k].append(y - x)
    return call


def _pooled(chunks: list[dict]) -> dict:
    """Latency percentiles and img/s over several chunks (img/s: requests over the summed wall time)."""
    from ganseg.serving.client import summarize

    lat = [x for c in chunks for x in c["latencies_s"]]
    out = summarize(lat, sum(c["wall_s"] for c in chunks))
    out["errors"] = sum(c.get("errors", 0) for c in chunks)
    return out


def _served_masks_agree(server, sess, spec, photos: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """Per input and mask transport: the share of mask pixels equal to the in-process pipeline's
    (1.0 = the same bytes). "lowres": what `ganseg client` asks for by default (MASK_LOWRES +
    MASK_SIZE, expanded by the client); "raw": the MASK tensor."""
    from ganseg import pipeline as P
    from ganseg.serving.client import connect, infer_once

    out = {}
    for protocol in ("grpc", "http"):
        url = server.grpc_url if protocol == "grpc" else server.http_url
        client = connect(url, protocol, ENTRY_BLS, timeout=120)
        for name, data in photos.items():
            b = P.pre([data], spec.input_size)
            want = P.post(sess.run([spec.output_name], {spec.input_name: b.x})[0], b)[0].mask
            for mask in ("lowres", "raw"):
                got, _ = infer_once(client, protocol, ENTRY_BLS, data, overlay=False, timeout=120, mask=mask)
                out[f"{name}, {protocol}, {mask}"] = float((got == want).mean()) if got.shape == want.shape else 0.0
        client.close()
    return out


def real_size_section(unet_file: Path, onnx_path: Path, work: Path, *, threads: int = 1, cfg=None,
                      rounds: int = 3, chunk_s: float = 0.5, c4_requests: int = 32, settings=None,
                      log: Callable[[str], None] = print) -> dict:
    """128² PNG, 1920x1080 JPEG and 4000x3000 JPEG, MASK and MASK + OVERLAY: in-process and served
    at concurrency 1 over gRPC and HTTP, interleaved request by request (in-process, gRPC, HTTP in
    rotating order: a shared machine's load hits all three alike), then gRPC at concurrency 4, and
    the raw MASK transport for comparison; returns rows, the side-by-side table, the goals and their
    markdown.

    Served requests are what `ganseg client` sends (`ganseg.serving.client.infer_once`, one client
    and connection per thread, kept alive): one encoded photo, MASK_LOWRES + MASK_SIZE (+ OVERLAY),
    the mask expanded to the photo's size inside the timed call, so both sides deliver the same
    thing. perf_analyzer is not used here: it always asks for every output (12 MB of raw MASK for a
    12 MP photo) and sends no request parameters over HTTP. `settings` is accepted for the callers of
    the perf_analyzer sections and unused."""
    from inprocess import real_size_inputs
    from triton_load import latency_run

    from ganseg import pipeline as P
    from ganseg.export.triton_repository import ServingConfig, build_repository
    from ganseg.serving.client import connect, infer_once
    from ganseg.serving.server import TritonServer

    photos = real_size_inputs()
    cfg = cfg or ServingConfig()
    repo = build_repository(work / "repo", onnx=onnx_path, pipeline="bls", cfg=cfg)
    sess = P.ort_session(onnx_path, threads)
    spec = P.UNetSpec.from_metadata(sess.get_modelmeta().custom_metadata_map, str(onnx_path))
    rows: list[dict] = []
    load_start = os.getloadavg()[0]
    with TritonServer(repo, log_path=work / "server.log") as server:
        with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=10) as r:
            meta = json.loads(r.read())
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        clients = {proto: connect(url, proto, ENTRY_BLS, timeout=60) for proto, url in urls.items()}  # kept alive
        log(f"  tritonserver {meta.get('version')} (BLS repository, shipped defaults); load {load_start:.1f}")
        for data in photos.values():  # warm-up: stubs, ORT, the kept-alive connections
            for proto in urls:
                for _ in range(3):
                    infer_once(clients[proto], proto, ENTRY_BLS, data, True, timeout=60, mask="lowres")
        for name, data in photos.items():
            for outputs in REAL_OUTPUTS:
                overlay = outputs != "MASK"
                stages: dict[str, list[float]] = {"pre": [], "net": [], "post": []}
                call = _inprocess_call(sess, spec, data, overlay, stages)
                t0 = time.perf_counter()
                for _ in range(3):
                    call()
                n = max(4, min(60, int(chunk_s / ((time.perf_counter() - t0) / 3))))
                for v in stages.values():
                    v.clear()
                chunks: dict[str, list[dict]] = {m: [] for m in MODES}
                lat: dict[str, list[float]] = {m: [] for m in MODES}
                for i in range(rounds * n):  # one of each per step, in rotating order: the same load for all three
                    for mode in MODES[i % 3:] + MODES[:i % 3]:
                        t = time.perf_counter()
                        if mode == "in-process":
                            call()
                        else:
                            proto = "grpc" if mode.startswith("gRPC") else "http"
                            infer_once(clients[proto], proto, ENTRY_BLS, data, overlay, timeout=60, mask="lowres")
                        lat[mode].append(time.perf_counter() - t)
                for mode in MODES:  # img/s at concurrency 1: requests over their summed latency
                    chunks[mode].append({"latencies_s": lat[mode], "wall_s": sum(lat[mode])})
                c4 = latency_run(urls["grpc"], "grpc", ENTRY_BLS, data, 4, c4_requests, warmup=4, overlay=overlay,
                                 keep_latencies=True, mask="lowres")
                stage_ms = {k: 1e3 * statistics.median(v) for k, v in stages.items()}
                for mode in MODES:
                    rows.append({"input": name, "outputs": outputs, "mode": mode, "transport": "lowres",
                                 "status": "ok", **_pooled(chunks[mode]),
                                 **({"stage_ms": stage_ms} if mode == "in-process" else {})})
                rows.append({"input": name, "outputs": outputs, "mode": "gRPC c=4", "transport": "lowres",
                             "status": "ok", **_pooled([c4])})
                log("  " + "  ".join(f"{name} {outputs} {r['mode']}: p50 {r['p50_ms']:.1f} ms {r['img_per_s']:.1f} img/s"
                                     for r in rows[-4:]))
            raw = latency_run(urls["grpc"], "grpc", ENTRY_BLS, data, 1, max(4, n), warmup=1, overlay=True,
                              keep_latencies=True, mask="raw")
            rows.append({"input": name, "outputs": "MASK + OVERLAY", "mode": "gRPC c=1", "transport": "raw",
                         "status": "ok", **_pooled([raw])})
            log(f"  {name} raw MASK transport gRPC c=1: p50 {rows[-1]['p50_ms']:.1f} ms {rows[-1]['img_per_s']:.1f} img/s")
        agree = _served_masks_agree(server, sess, spec, photos)
    summary = real_size_summary(rows, photos)
    goals = real_size_goals(summary, agree)
    sizes = {k: len(v) for k, v in photos.items()}
    return {"rows": rows, "summary": summary, "goals": goals, "mask_agreement": agree, "input_bytes": sizes,
            "csv": "", "tritonserver": meta.get("version"), "threads": threads, "serving_config": cfg.__dict__,
            "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0], "rounds": rounds,
            "markdown": real_size_markdown(summary, goals, sizes, load_start, os.getloadavg()[0])}


def real_size_summary(rows: list[dict], photos) -> list[dict]:
    """One line per input x outputs: in-process, gRPC c=1, HTTP c=1, gRPC c=4 (compact transport),
    and the raw MASK transport at gRPC c=1 on the MASK + OVERLAY lines."""
    out = []
    for name in photos:
        for outputs in REAL_OUTPUTS:
            pick = {(r["mode"], r["transport"]): r for r in rows
                    if r["input"] == name and r["outputs"] == outputs and r.get("status") == "ok"}
            ip, g1, h1, g4 = (pick.get((m, "lowres")) for m in (*MODES, "gRPC c=4"))
            raw = pick.get(("gRPC c=1", "raw"))
            line = {"input": name, "outputs": outputs,
                    "inprocess_p50_ms": ip and ip["p50_ms"], "inprocess_img_s": ip and ip["img_per_s"],
                    "inprocess_stage_ms": ip and ip.get("stage_ms"),
                    "grpc_c1_p50_ms": g1 and g1["p50_ms"], "grpc_c1_img_s": g1 and g1["img_per_s"],
                    "http_c1_p50_ms": h1 and h1["p50_ms"], "http_c1_img_s": h1 and h1["img_per_s"],
                    "grpc_c4_p50_ms": g4 and g4["p50_ms"], "grpc_c4_img_s": g4 and g4["img_per_s"],
                    "raw_grpc_c1_p50_ms": raw and raw["p50_ms"], "raw_grpc_c1_img_s": raw and raw["img_per_s"]}
            for proto in ("grpc", "http"):
                a, b = line[f"{proto}_c1_img_s"], line["inprocess_img_s"]
                line[f"{proto}_over_inprocess_c1"] = a / b if a and b else None
                a, b = line[f"{proto}_c1_p50_ms"], line["inprocess_p50_ms"]  # the same from medians: robust to stalls
                line[f"{proto}_over_inprocess_c1_p50"] = b / a if a and b else None
            st = line["inprocess_stage_ms"]
            line["inprocess_prepost_share"] = (st["pre"] + st["post"]) / sum(st.values()) if st else None
            out.append(line)
    return out


def real_size_goals(summary: list[dict], agree: dict[str, float]) -> list[dict]:
    """The issue's goals, each with the figures it is computed from."""
    by = {(s["input"], s["outputs"]): s for s in summary}
    goals = []

    def add(goal: str, value, target: float, higher: bool, figures: str):
        met = None if value is None else (value >= target if higher else value <= target)
        goals.append({"goal": goal, "value": value, "target": target, "met": met, "figures": figures})

    def f(v):
        return float("nan") if v is None else v

    small, big = by.get((SMALL, "MASK + OVERLAY"), {}), by.get((BIG, "MASK + OVERLAY"), {})
    a, b = big.get("grpc_c1_p50_ms"), small.get("grpc_c1_p50_ms")
    add("4000x3000 JPEG, MASK + OVERLAY, concurrency 1: cost ≤ 4x a 128² PNG (p50 latency ratio)",
        a / b if a and b else None, REAL_GOALS["12mp_over_128_c1"], False,
        f"gRPC p50 {f(a):.1f} ms vs {f(b):.1f} ms")
    for outputs in REAL_OUTPUTS:
        v = by.get((BIG, outputs), {}).get("grpc_c4_img_s")
        add(f"4000x3000 JPEG at concurrency 4, {outputs}: ≥ 15 img/s", v, REAL_GOALS["12mp_img_s_c4"], True,
            "gRPC, closed loop, 4 clients")
    for line in (x for x in summary if x["outputs"] != "MASK"):
        add(f"HTTP c=1 ÷ in-process, {line['input']}, {line['outputs']}: ≥ 0.85", line["http_over_inprocess_c1"],
            REAL_GOALS["http_over_inprocess_c1"], True,
            f"{f(line['http_c1_img_s']):.1f} vs {f(line['inprocess_img_s']):.1f} img/s")
    for key, v in agree.items():
        add(f"served mask = in-process, {key}: 100 % of pixels", v, REAL_GOALS["served_equal_inprocess"], True,
            "one request per input and transport after the timed runs")
    return goals


def real_size_markdown(summary: list[dict], goals: list[dict], sizes: dict[str, int], load_start: float | None = None,
                       load_end: float | None = None) -> str:
    def f(v, d=1):
        return "–" if v is None else f"{v:.{d}f}"

    def pct(v):
        return "–" if v is None else f"{100 * v:.0f} %"

    text = markdown_table(
        ["input", "outputs", "in-process p50 ms", "in-process img/s", "gRPC c=1 p50 ms", "gRPC c=1 img/s",
         "HTTP c=1 p50 ms", "HTTP c=1 img/s", "gRPC ÷ in-process", "HTTP ÷ in-process", "HTTP ÷ in-process (p50)",
         "gRPC c=4 img/s", "raw MASK: gRPC c=1 p50 ms", "in-process pre / net / post ms", "in-process pre/post share"],
        [[s["input"], s["outputs"], f(s["inprocess_p50_ms"]), f(s["inprocess_img_s"]), f(s["grpc_c1_p50_ms"]),
          f(s["grpc_c1_img_s"]), f(s["http_c1_p50_ms"]), f(s["http_c1_img_s"]), f(s["grpc_over_inprocess_c1"], 2),
          f(s["http_over_inprocess_c1"], 2), f(s["http_over_inprocess_c1_p50"], 2),
          f(s["grpc_c4_img_s"]), f(s["raw_grpc_c1_p50_ms"]),
          " / ".join(f(s["inprocess_stage_ms"][k]) for k in ("pre", "net", "post")) if s["inprocess_stage_ms"] else "–",
          pct(s["inprocess_prepost_share"])] for s in summary],
        numeric=[False, False] + [True] * 13)
    load = "" if load_start is None else f" 1-min load average {load_start:.1f} at the start, {f(load_end)} at the end."
    text += ("\nServed: `ganseg_segment` (BLS, the shipped serving defaults), requests as `ganseg client` sends them: "
             "one encoded photo, MASK_LOWRES + MASK_SIZE (+ OVERLAY), the mask expanded to the photo's size by the "
             "client inside the timed call; one kept-alive connection per client thread. In-process: "
             "`ganseg.pipeline.pre` -> ONNX Runtime -> `ganseg.pipeline.post` (the mask at the photo's size), the "
             "same threads as the served UNet. Concurrency-1 rows are interleaved request by request (in-process, "
             "gRPC, HTTP in rotating order); their img/s = requests ÷ summed latency (the goal's ratio), c=4: "
             "requests ÷ wall time; \"(p50)\": the in-process p50 ÷ the HTTP p50, which a stall from another job "
             "moves less. raw MASK: the same MASK + OVERLAY request asking for the full-size MASK "
             "tensor instead. Input sizes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items())
             + "." + load + "\n\n")
    text += markdown_table(["goal", "measured", "target", "result", "from"],
                           [[g["goal"], f(g["value"], 3), f"{g['target']:g}",
                             "–" if g["met"] is None else "met" if g["met"] else "**not met**", g["figures"]]
                            for g in goals], numeric=[False, True, True, False, False])
    return text


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
    ap.add_argument("--real-sizes", action="store_true",
                    help="only the real-size rows (128² PNG, 1920x1080 and 4000x3000 JPEG; served as `ganseg client` "
                         "sends them vs in-process, against the goals) -> results/realsize.{json,md}")
    ap.add_argument("--rounds", type=int, default=3,
                    help="--real-sizes: interleaved in-process / gRPC / HTTP requests per row, in units of ~0.5 s each")
    args = ap.parse_args(argv)
    from ganseg.unet import save_unet

    if args.real_sizes:
        return _real_size_main(args)

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


def _real_size_main(args) -> int:
    from inprocess import bench_unet, export_for_bench

    from ganseg.export.triton_repository import ServingConfig
    from ganseg.unet import save_unet

    unet, about = bench_unet(args.unet)
    env0 = environment()
    with tempfile.TemporaryDirectory(prefix="ganseg-realsize-") as tmp:
        tmp = Path(tmp)
        save_unet(unet, tmp / "unet.safetensors", unet.class_names, extra=dict(unet.meta))
        sec = real_size_section(tmp / "unet.safetensors", export_for_bench(unet, tmp), tmp,
                                threads=ServingConfig().ort_threads, rounds=args.rounds)
    env = environment(tritonserver=sec.get("tritonserver"), load_avg_at_start=env0["load_avg_1_5_15"])
    out = Path(args.out)
    sec.pop("csv")
    write_json(out / "realsize.json", {"environment": env, "unet": about, **sec})
    write_text(out / "realsize.md", environment_markdown(env) + f"\nUNet: {about}. Command: `python "
               f"benchmarks/served.py --real-sizes --rounds {args.rounds}`.\n\n" + sec["markdown"])
    print(sec["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
