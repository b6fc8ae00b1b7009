"""`ganseg client`: segment image files through a running Triton server (tritonclient).

    ganseg client photos/ more.jpg --url 127.0.0.1:8001 --protocol grpc --concurrency 4 --out masks/

Takes the same inputs as `ganseg segment` (`ganseg.paths.list_images`: files, and folders expanded
to their image files) and names outputs by the same rule (`ganseg.paths.output_names`: a/0000.png
and b/0000.png become a__0000_* and b__0000_*, never one over the other). Sends each file's bytes
as it is (the server decodes: PNG, JPEG, WEBP, BMP, TIFF, GIF, PPM; EXIF rotation, 16-bit, alpha),
one image per request; the server batches concurrent requests. Writes NAME_mask.png (indexed PNG:
pixel values are class indices, colours the model's palette) and NAME_overlay.jpg per image,
atomically, and one contact sheet per run: the first free name of overlays.png, overlays-2.png, ...
(a reused --out folder keeps earlier runs' sheets; masks of the same NAME are replaced). Prints one
whole line per image (written under one lock, so concurrent results never mix on the terminal)
and a summary.

If the server stops during a run, the image in flight says so ("the Triton server ... is
stopping") rather than Triton's "has no available versions", and the images not yet sent are
counted, not sent.

`--serve` starts a temporary server on free loopback ports for the run (the bundled default UNet,
or --repo), then stops it: what `make demo` uses. SIGTERM or Ctrl-C stops that server and its
Python-backend stubs (`ganseg.serving.server.signals_interrupt`, as `ganseg serve`).

Python API: `segment_files`, `infer_once`, `summarize`. The load generator the benchmarks use
(`latency_run`: batch-1 requests at a concurrency) is measurement code and lives in
benchmarks/triton_load.py, not in the installed package.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganseg.errors import UserError

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


MASK_TRANSPORTS = ("lowres", "raw")


def mask_transport(client, model: str, protocol: str) -> str:
    """"lowres" when the model offers MASK_LOWRES + MASK_SIZE (the compact form), else "raw" (MASK:
    a repository exported before the compact form existed)."""
    try:
        meta = client.get_model_metadata(model)
        names = {o.name for o in meta.outputs} if protocol == "grpc" else {o["name"] for o in meta["outputs"]}
    except Exception:  # noqa: BLE001 - metadata is an optimization; raw MASK is always there
        return "raw"
    return "lowres" if {"MASK_LOWRES", "MASK_SIZE"} <= names else "raw"


def infer_once(client, protocol: str, model: str, data: bytes | np.ndarray, overlay: bool = True,
               timeout: float | None = None, overlay_size: int | None = None, mask: str = "lowres"):
    """One request with one image (encoded bytes, or uint8 HWC for the raw model) ->
    (mask uint8 HW, overlay JPEG bytes or None). OVERLAY is requested only when `overlay` (the
    server computes it only then); `overlay_size` sets its long side (request parameter
    `overlay_max_side`; default: the model's, 1024).

    `mask` "lowres" asks for MASK_LOWRES + MASK_SIZE (the labels at the network's size, a few KB,
    instead of 12 MB of MASK for a 12 MP photo) and expands them here with the server's own
    `ganseg.pipeline.resize_labels`: the same bytes as MASK. "raw" asks for MASK."""
    mod = _module(protocol)
    if isinstance(data, np.ndarray):
        inp = mod.InferInput("IMAGE", [1, *data.shape], "UINT8")
        inp.set_data_from_numpy(data[None])
    else:
        inp = mod.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[bytes(data)]], dtype=object))
    if mask not in MASK_TRANSPORTS:
        raise UserError(f"--mask-transport {mask!r}: use one of {', '.join(MASK_TRANSPORTS)}")
    names = ["MASK_LOWRES", "MASK_SIZE"] if mask == "lowres" else ["MASK"]
    binary = {"binary_data": True} if protocol == "http" else {}  # HTTP: raw bytes after the JSON header, not JSON
    outs = [mod.InferRequestedOutput(n, **binary) for n in names + (["OVERLAY"] if overlay else [])]
    kw = {}
    if timeout is not None:
        kw = {"client_timeout": timeout} if protocol == "grpc" else {"timeout": int(timeout * 1e6)}
    if overlay and overlay_size is not None:
        kw["parameters"] = {"overlay_max_side": int(overlay_size)}
    r = client.infer(model, [inp], outputs=outs, **kw)
    ov = r.as_numpy("OVERLAY") if overlay else None
    if mask == "lowres":
        from ganseg.pipeline import resize_labels

        h, w = r.as_numpy("MASK_SIZE")[0]
        full = resize_labels(r.as_numpy("MASK_LOWRES")[0], (int(h), int(w)))
    else:
        full = r.as_numpy("MASK")[0]
    return full, (bytes(ov.reshape(-1)[0]) if ov is not None else None)


@dataclass
class Result:
    path: Path
    latency_s: float
    mask: np.ndarray | None = None
    overlay: bytes | None = None
    error: str | None = None
    sent: bool = True  # False: not sent, the server was already stopping
    animated: bool = False  # several frames (GIF/APNG/WebP/TIFF): the server segments the first


def server_stopping(url: str, protocol: str, timeout: float = 2.0) -> bool:
    """True if the server at `url` is shutting down or gone: not ready, or not answering.

    Why ask: while Triton shuts down it unloads models first, so a request in flight fails with
    "... has no available versions" or "Server is stopping, scheduler ..." or a refused
    connection, depending on timing and protocol; readiness (false from the first moment of a
    shutdown) tells these apart from an error about the image itself."""
    try:
        if protocol == "http":
            c = _module(protocol).InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
            return not c.is_server_ready()
        c = _module(protocol).InferenceServerClient(url)
        return not c.is_server_ready(client_timeout=timeout)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - refused, reset, timed out: no server there any more
        return True


def stopping_message(url: str) -> str:
    return f"not segmented: the Triton server at {url} is stopping (or stopped); rerun when it is back"


def segment_files(files: list[Path], url: str, protocol: str = "grpc", model: str = "ganseg_segment",
                  concurrency: int = 1, overlay: bool = True, timeout: float = 60.0,
                  on_result=None, overlay_size: int | None = None, mask: str | None = None) -> list[Result]:
    """Segment files through the server, `concurrency` requests in flight (one client per thread).

    `mask`: how MASK travels (`infer_once`); None picks "lowres" when the model offers it.

    A bad image becomes a Result with `.error` (ganseg's one-line message from the header check
    `ganseg.pipeline.check_photo`, done before sending, or the server's); the rest go on. Once the
    server is found stopping, the images not yet sent are not sent (`.sent` False, `.error` says
    why) and `on_result` is not called for them. An interrupt (KeyboardInterrupt, also what
    SIGTERM raises under `signals_interrupt`) cancels what is queued and is re-raised; results that
    arrive after it are not reported."""
    from ganseg.images import open_photo

    first = connect(url, protocol, model)  # clear error before reading anything
    mask = mask or mask_transport(first, model, protocol)
    local = threading.local()
    stopping = threading.Event()
    cancelled = threading.Event()

    def send(path: Path) -> Result:
        if not hasattr(local, "client"):
            local.client = _module(protocol).InferenceServerClient(url)
        data = path.read_bytes()
        try:  # the server's own limits, from the header: a photo it would refuse is not sent
            with open_photo(data, str(path)) as photo:  # what pipeline.check_photo does, + animated
                animated = photo.animated
        except UserError as exc:
            return Result(path, 0.0, error=" ".join(str(exc).split()))
        t0 = time.perf_counter()
        try:
            labels, ov = infer_once(local.client, protocol, model, data, overlay, timeout, overlay_size, mask)
            return Result(path, time.perf_counter() - t0, labels, ov, animated=animated)
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException and transport errors
            msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
            if stopping.is_set() or server_stopping(url, protocol):
                stopping.set()
                msg = stopping_message(url)
            return Result(path, time.perf_counter() - t0, error=" ".join(str(msg).split()))

    def one(path: Path) -> Result:
        if stopping.is_set():
            return Result(path, 0.0, error=stopping_message(url), sent=False)
        res = send(path)
        if on_result and not cancelled.is_set():
            on_result(res)
        return res

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = [pool.submit(one, f) for f in files]
        wait(futures)
    except BaseException:
        cancelled.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [f.result() for f in futures]


def summarize(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    lat = sorted(1e3 * x for x in latencies_s)
    if not lat:
        return {"n": 0}

    def pct(q: float) -> float:  # nearest rank
        return lat[min(len(lat) - 1, max(0, math.ceil(q / 100 * len(lat)) - 1))]

    return {"n": len(lat), "p50_ms": pct(50), "p99_ms": pct(99), "mean_ms": statistics.fmean(lat),
            "img_per_s": len(lat) / wall_s if wall_s > 0 else float("nan")}


# --------------------------------------------------------------------------------------------
# CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--url", default=None, help="server address host:port (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    p.add_argument("--model", default="ganseg_segment", help="the image-bytes entry point to call")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--out", required=True,
                   help="folder for NAME_mask.png, NAME_overlay.jpg and this run's contact sheet overlays[-N].png")
    p.add_argument("--no-overlay", action="store_true", help="masks only (the server then computes no overlay)")
    p.add_argument("--overlay-size", type=int, default=None,
                   help="long side of NAME_overlay.jpg in pixels (default: the server's, 1024; never above the photo's)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--mask-transport", choices=MASK_TRANSPORTS, default=None,
                   help="lowres: MASK_LOWRES + MASK_SIZE, expanded here (a few KB per photo; default when the "
                        "model offers it); raw: the full-size MASK tensor (12 MB for a 12 MP photo)")
    p.add_argument("--serve", action="store_true",
                   help="start a temporary server (free loopback ports) for this run, stop it after")
    p.add_argument("--repo", default=None, help="--serve: repository to serve (default: the bundled default UNet)")


class LinePrinter:
    """Writes whole lines to a stream, one `write` per line under one lock.

    Why: results arrive on `--concurrency` worker threads; `print` writes the text and the newline
    as two calls, so two threads' lines could mix on the terminal."""

    def __init__(self, stream=None):
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        stream = self.stream or sys.stdout  # looked up per call: follows a redirected sys.stdout
        with self.lock:
            stream.write(line + "\n")
            stream.flush()


def run(args: argparse.Namespace) -> int:
    from ganseg.paths import check_out_dir, list_images, output_names

    if args.concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {args.concurrency}")
    if not (math.isfinite(args.timeout) and args.timeout > 0):  # 0 was no limit over HTTP, "Deadline Exceeded" over gRPC
        raise UserError(f"--timeout {args.timeout:g}: pass the seconds one request may take, > 0 (default 60)")
    if args.repo and not args.serve:
        raise UserError("--repo only applies with --serve (otherwise pass --url of a running server)")
    if args.serve and args.url:
        raise UserError("--serve picks free ports itself; drop --url")
    if args.overlay_size is not None and (args.overlay_size < 1 or args.no_overlay):
        raise UserError(f"--overlay-size {args.overlay_size}: pass a positive number of pixels, without --no-overlay")
    out = check_out_dir(args.out)
    say = LinePrinter()
    files = list_images(args.images, note=say)
    names = dict(zip(files, output_names(files)))
    for f, name in names.items():
        if name != f.stem:
            say(f"note: {f} -> {name}_mask.png (another input has the same file name)")
    if not args.serve:
        return _segment_and_save(args, files, names, args.url or DEFAULT_URLS[args.protocol], out, say)
    from ganseg.serving.server import TritonServer, default_repository, signals_interrupt

    with signals_interrupt():  # SIGTERM / Ctrl-C: unwind, so the server and its stubs are stopped
        repo = Path(args.repo) if args.repo else default_repository()
        t0 = time.perf_counter()
        server = TritonServer(repo)
        try:
            with server:
                say(f"started Triton on {repo} in {time.perf_counter() - t0:.1f} s (pid {server.pid}; "
                    f"HTTP {server.http_url}, gRPC {server.grpc_url})")
                url = server.http_url if args.protocol == "http" else server.grpc_url
                code = _segment_and_save(args, files, names, url, out, say)
        except KeyboardInterrupt:
            if server.pid is not None:
                say("interrupted: stopped Triton")
            raise
    say("stopped Triton")
    return code


def _segment_and_save(args, files: list[Path], names: dict[Path, str], url: str, out: Path, say) -> int:
    from ganseg.paths import first_frame_note
    from ganseg.pipeline import save_contact_sheet, save_result  # the files `ganseg segment` writes

    client = connect(url, args.protocol, args.model)
    palette = model_palette(client, args.model, args.protocol)
    if palette is None:
        from ganseg.labels import PALETTE as palette
    out.mkdir(parents=True, exist_ok=True)
    width = max(len(str(f)) for f in files)

    def on_result(r: Result) -> None:  # on a worker thread
        name = names[r.path]
        if r.error is None:
            save_result(out, name, r.mask, r.overlay, palette)
            say(f"{str(r.path):<{width}}  {r.mask.shape[1]}x{r.mask.shape[0]}  {1e3 * r.latency_s:7.1f} ms  "
                f"-> {out / (name + '_mask.png')}")
        else:
            say(f"{str(r.path):<{width}}  ERROR {r.error}")

    t0 = time.perf_counter()
    results = segment_files(files, url, args.protocol, args.model, args.concurrency,
                            overlay=not args.no_overlay, timeout=args.timeout, on_result=on_result,
                            overlay_size=args.overlay_size, mask=args.mask_transport)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.error is None]
    frames = first_frame_note([r.path for r in ok if r.animated])
    if frames:  # once per run, not once per file
        say(frames)
    s = summarize([r.latency_s for r in ok], wall)
    if ok:
        say(f"segmented {len(ok)}/{len(results)} image(s) via {args.protocol}://{url} model {args.model} "
            f"(concurrency {args.concurrency}): p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, "
            f"{s['img_per_s']:.1f} img/s; masks in {out}")
    sheet = save_contact_sheet(out, [r.overlay for r in ok])  # one picture of this run, as `ganseg segment`
    if sheet is not None:
        say(f"contact sheet: {sheet}")
    unsent = sum(not r.sent for r in results)
    if unsent:
        say(f"{unsent} image(s) not sent: {stopping_message(url)}")
    failed = len(results) - len(ok) - unsent
    if failed:
        say(f"{failed} image(s) failed (messages above)")
    return 1 if failed or unsent else 0
