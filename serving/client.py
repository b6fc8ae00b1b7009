"""`ganseg client`: segment image files through a running Triton server (tritonclient).

    ganseg client photos/ more.jpg --url 127.0.0.1:8001 --protocol grpc --concurrency 4 --out masks/

Sends each file's bytes as it is (the server decodes: PNG, JPEG, WEBP, BMP, TIFF, GIF, PPM; EXIF
rotation, 16-bit, alpha), one image per request; the server batches concurrent requests. Writes
NAME_mask.png (indexed PNG: pixel values are class indices, colours the model's palette) and
NAME_overlay.png per image and overlays.png (thumbnails of all), atomically, and prints each image's
latency and a summary.

`--serve` starts a temporary server on free loopback ports for the run (the bundled default UNet,
or --repo), then stops it: what `make demo` uses.

Python API (benchmarks): `segment_files`, `infer_once`, `latency_run` (batch-1 requests at a
concurrency, p50/p99 and img/s).
"""
from __future__ import annotations

import argparse
import math
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganseg.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm"}
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}


def _module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as mod
        elif protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            raise UserError(f"--protocol {protocol!r}: use http or grpc")
    except ImportError:
        raise UserError("tritonclient is not installed; pip install 'ganseg[serve]'") from None
    return mod


def connect(url: str, protocol: str, model: str, timeout: float = 10.0):
    """A client for `url`, checked: server live and `model` ready (UserError otherwise)."""
    mod = _module(protocol)
    kw = {"connection_timeout": timeout, "network_timeout": timeout} if protocol == "http" else {}
    try:
        client = mod.InferenceServerClient(url, **kw)
        live = client.is_server_live()
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        raise UserError(f"no Triton server at {url} ({protocol}): {' '.join(str(exc).split())[:200]}; "
                        f"start one with `ganseg serve` or pass --url/--protocol") from None
    if not live:
        raise UserError(f"the Triton server at {url} is not live; check its log (`ganseg serve`)")
    try:
        ready = client.is_model_ready(model)
    except Exception:  # noqa: BLE001
        ready = False
    if not ready:
        try:
            index = client.get_model_repository_index()
            names = sorted({m["name"] if isinstance(m, dict) else m.name for m in
                            (index if isinstance(index, list) else index.models)})
        except Exception:  # noqa: BLE001
            names = []
        raise UserError(f"model {model!r} is not loaded on {url} (loaded: {', '.join(names) or 'none'}); "
                        f"pass --model or serve a repository from `ganseg export triton`")
    return client


def model_palette(client, model: str, protocol: str) -> np.ndarray | None:
    """The palette from the model's config parameters (None if it has none)."""
    import json

    try:
        cfg = client.get_model_config(model)
        if protocol == "grpc":
            params = {k: v.string_value for k, v in cfg.config.parameters.items()}
        else:
            params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        return np.asarray(json.loads(params["palette"]), np.uint8).reshape(-1, 3)
    except Exception:  # noqa: BLE001 - a palette is cosmetic; fall back to the default one
        return None


def infer_once(client, protocol: str, model: str, data: bytes | np.ndarray, overlay: bool = True,
               timeout: float | None = None):
    """One request with one image (encoded bytes, or uint8 HWC for the raw model) ->
    (mask uint8 HW, overlay PNG bytes or None)."""
    mod = _module(protocol)
    if isinstance(data, np.ndarray):
        inp = mod.InferInput("IMAGE", [1, *data.shape], "UINT8")
        inp.set_data_from_numpy(data[None])
    else:
        inp = mod.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[bytes(data)]], dtype=object))
    outs = [mod.InferRequestedOutput("MASK")] + ([mod.InferRequestedOutput("OVERLAY")] if overlay else [])
    kw = {}
    if timeout is not None:
        kw = {"client_timeout": timeout} if protocol == "grpc" else {"timeout": int(timeout * 1e6)}
    r = client.infer(model, [inp], outputs=outs, **kw)
    ov = r.as_numpy("OVERLAY") if overlay else None
    return r.as_numpy("MASK")[0], (bytes(ov.reshape(-1)[0]) if ov is not None else None)


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); errors before any work."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.stem.endswith(("_mask", "_overlay")))
            if not found:
                raise UserError(f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: no such file or folder; pass image files or folders of images")
    return out


def _unique_stems(files: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        stems.append(f.stem if n == 0 else f"{f.stem}-{n + 1}")
    return stems


@dataclass
class Result:
    path: Path
    latency_s: float
    mask: np.ndarray | None = None
    overlay: bytes | None = None
    error: str | None = None


def segment_files(files: list[Path], url: str, protocol: str = "grpc", model: str = "ganseg_segment",
                  concurrency: int = 1, overlay: bool = True, timeout: float = 60.0,
                  on_result=None) -> list[Result]:
    """Segment files through the server, `concurrency` requests in flight (one client per thread).
    A bad image becomes a Result with `.error` (the server's message); the rest go on."""
    connect(url, protocol, model)  # clear error before reading anything
    local = threading.local()

    def one(path: Path) -> Result:
        if not hasattr(local, "client"):
            local.client = _module(protocol).InferenceServerClient(url)
        data = path.read_bytes()
        t0 = time.perf_counter()
        try:
            mask, ov = infer_once(local.client, protocol, model, data, overlay, timeout)
            res = Result(path, time.perf_counter() - t0, mask, ov)
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException and transport errors
            msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
            res = Result(path, time.perf_counter() - t0, error=" ".join(str(msg).split()))
        if on_result:
            on_result(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, files))


def summarize(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    lat = sorted(1e3 * x for x in latencies_s)
    if not lat:
        return {"n": 0}

    def pct(q: float) -> float:  # nearest rank
        return lat[min(len(lat) - 1, max(0, math.ceil(q / 100 * len(lat)) - 1))]

    return {"n": len(lat), "p50_ms": pct(50), "p99_ms": pct(99), "mean_ms": statistics.fmean(lat),
            "img_per_s": len(lat) / wall_s if wall_s > 0 else float("nan")}


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


# --------------------------------------------------------------------------------------------
# CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--url", default=None, help="server address host:port (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    p.add_argument("--model", default="ganseg_segment", help="the image-bytes entry point to call")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--out", required=True, help="folder for NAME_mask.png and NAME_overlay.png")
    p.add_argument("--no-overlay", action="store_true", help="masks only")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--serve", action="store_true",
                   help="start a temporary server (free loopback ports) for this run, stop it after")
    p.add_argument("--repo", default=None, help="--serve: repository to serve (default: the bundled default UNet)")


def run(args: argparse.Namespace) -> int:
    from ganseg.images import write_atomic
    from ganseg.serving.transforms import label_png

    if args.concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {args.concurrency}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder (created if missing)")
    if args.repo and not args.serve:
        raise UserError("--repo only applies with --serve (otherwise pass --url of a running server)")
    files = collect_images(args.images)
    stems = dict(zip(files, _unique_stems(files)))
    if args.serve:
        from ganseg.serving.server import TritonServer, default_repository

        if args.url:
            raise UserError("--serve picks free ports itself; drop --url")
        repo = Path(args.repo) if args.repo else default_repository()
        t0 = time.perf_counter()
        with TritonServer(repo) as server:
            print(f"started Triton on {repo} in {time.perf_counter() - t0:.1f} s "
                  f"(HTTP {server.http_url}, gRPC {server.grpc_url})", flush=True)
            url = server.http_url if args.protocol == "http" else server.grpc_url
            code = _segment_and_save(args, files, stems, url, out, write_atomic, label_png)
        print("stopped Triton")
        return code
    url = args.url or DEFAULT_URLS[args.protocol]
    return _segment_and_save(args, files, stems, url, out, write_atomic, label_png)


def _segment_and_save(args, files, stems, url, out: Path, write_atomic, label_png) -> int:
    client = connect(url, args.protocol, args.model)
    palette = model_palette(client, args.model, args.protocol)
    if palette is None:
        from ganseg.labels import PALETTE as palette
    out.mkdir(parents=True, exist_ok=True)
    width = max(len(str(f)) for f in files)

    def on_result(r: Result) -> None:
        name = stems[r.path]
        if r.error is None:
            write_atomic(out / f"{name}_mask.png", label_png(r.mask, palette))
            if r.overlay is not None:
                write_atomic(out / f"{name}_overlay.png", r.overlay)
            print(f"{str(r.path):<{width}}  {r.mask.shape[1]}x{r.mask.shape[0]}  {1e3 * r.latency_s:7.1f} ms", flush=True)
        else:
            print(f"{str(r.path):<{width}}  ERROR {r.error}", flush=True)

    t0 = time.perf_counter()
    results = segment_files(files, url, args.protocol, args.model, args.concurrency,
                            overlay=not args.no_overlay, timeout=args.timeout, on_result=on_result)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.error is None]
    s = summarize([r.latency_s for r in ok], wall)
    failed = len(results) - len(ok)
    if ok:
        print(f"segmented {len(ok)}/{len(results)} image(s) via {args.protocol}://{url} model {args.model} "
              f"(concurrency {args.concurrency}): p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
              f"{s['img_per_s']:.1f} img/s; masks in {out}")
    shown = [r for r in ok if r.overlay is not None][:64]
    if shown:  # one picture of all results, as `ganseg segment` writes (128 px thumbnails)
        import io

        from PIL import Image

        from ganseg.images import make_grid, save_png

        thumbs = [np.asarray(Image.open(io.BytesIO(bytes(r.overlay))).convert("RGB").resize((128, 128))) for r in shown]
        save_png(out / "overlays.png", make_grid(np.stack(thumbs)))
    if failed:
        print(f"{failed} image(s) failed (messages above)")
    return 1 if failed else 0
