"""In-process baselines for the served UNet: torch eager, torch.compile and ONNX Runtime.

Why: a served figure means little alone. What a user wants to know is what the server costs over
calling the same model in their own process, so the baselines use the same network (the exported
ONNX file of the same UNet), the same thread count as the server's model instance, and the same
batches (1, 4, 8, 16) at the UNet's training size (the size the server runs it at), 256² and 512².

Besides the bare network (float NCHW in, logits out) the pipeline rows measure the whole
image-bytes path in-process with the served code itself (`ganseg.pipeline`: decode, resize,
normalize | network | argmax, MASK at the photo's size, OVERLAY preview when asked), with its stage
split: the in-process counterpart of the served `IMAGE -> MASK (+ OVERLAY)` entry point, also at
real photo sizes (`real_size_inputs`; benchmarks/served.py `real_size_section` puts them side by
side with the server).

    python benchmarks/inprocess.py [--unet RUN] [--threads 2]  # -> results/inprocess.{json,md}
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ganseg.pipeline import ort_session  # the one ONNX Runtime session set-up (the server's too)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, absent, environment, environment_markdown, markdown_table, measure, write_json, write_text  # noqa: E402

ENGINES = ("torch eager", "torch.compile", "onnxruntime")
BATCHES = (1, 4, 8, 16)


def bench_unet(path: str | os.PathLike | None = None):
    """(UNet, description): the given run / file, else the bundled default, else — only while the
    bundled one is not trained yet — a random UNet of the default recipe (timing does not depend on
    the weights; the description says so)."""
    import torch

    from ganseg.unet import DEFAULT_UNET, UNet, UNetConfig, load_unet

    if path is not None:
        u = load_unet(path)
        return u, f"{path}"
    if DEFAULT_UNET.is_file():
        return load_unet(), "bundled default UNet"
    torch.manual_seed(0)
    u = UNet(UNetConfig(num_classes=10, width=16, depth=4)).eval()
    u.class_names = [f"class{i}" for i in range(10)]
    u.meta = {"resolution": 64}
    return u, "random-weight UNet (width 16, depth 4, 64²): the bundled default was not installed"


def export_for_bench(unet, out_dir: Path) -> Path:
    from ganseg.export.onnx_export import export_unet

    return export_unet(unet, out_dir / "unet.onnx")


def _row(engine: str, batch: int, size: int, threads: int, timing, **extra) -> dict:
    s = timing.summary()
    return {"engine": engine, "batch": batch, "size": size, "threads": threads, "status": "ok",
            "median_ms": s["median_ms"], "p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"],
            "img_s": s["items_per_s"], "repeats": s["repeats"], "warmup": s["warmup"], **extra}


def skipped(reason: str, **keys) -> dict:
    """A row left out on purpose (to fit the time budget), with how to measure it."""
    return {**keys, "status": "skipped", "reason": reason}


def network_rows(unet, onnx_path: Path | None, *, sizes: list[int], batches=BATCHES, threads: int = 2,
                 engines=ENGINES, warmup: int = 2, repeats: int = 5, min_seconds: float = 0.5,
                 compile_budget_s: float | None = None, max_seconds: float | None = 4.0,
                 log: Callable[[str], None] = print, on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Bare-network rows: float32 [B,3,S,S] in, logits out, per engine x size x batch.

    torch.compile compiles with dynamic shapes (one graph for every batch > 1 and size; batch 1 is
    specialized, as dynamo always does for size-1 dims); each first call's time is recorded as
    `first_call_s`. Once `compile_budget_s` seconds went into first calls, the remaining
    torch.compile rows are skipped (status "skipped", with the command that measures them)."""
    import torch

    torch.set_num_threads(threads)
    rows: list[dict] = []
    unet = unet.eval()
    compiled, compile_error, compile_spent = None, None, 0.0
    sess, ort_error = None, None
    if "onnxruntime" in engines:
        if onnx_path is None:
            ort_error = "no ONNX file (ganseg.export.onnx_export.export_unet unavailable or failed)"
        else:
            try:
                sess = ort_session(onnx_path, threads)
            except Exception as exc:  # noqa: BLE001 — recorded as the row's reason
                ort_error = f"onnxruntime could not load {onnx_path}: {exc}"
    if "torch.compile" in engines:
        try:
            import torch._dynamo

            for name in ("recompile_limit", "cache_size_limit"):  # every shape of the grid may compile
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
            compiled = torch.compile(unet, dynamic=True)
        except Exception as exc:  # noqa: BLE001
            compile_error = f"torch.compile unavailable: {exc}"
    m = 2 ** unet.cfg.depth
    for size in sizes:
        if size % m:
            for e in engines:
                rows += [absent(f"{size} is not a multiple of {m}", engine=e, batch=b, size=size, threads=threads)
                         for b in batches]
            continue
        for batch in batches:
            x = torch.rand(batch, 3, size, size) * 2 - 1
            for engine in engines:
                keys = dict(engine=engine, batch=batch, size=size, threads=threads)
                if engine == "torch eager":
                    xc = x.contiguous(memory_format=torch.channels_last)  # segment_with_unet's layout

                    def fn(xc=xc):
                        with torch.inference_mode():
                            unet(xc)
                    t = measure(fn, warmup=warmup, repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds,
                                items=batch)
                    rows.append(_row(engine, batch, size, threads, t))
                elif engine == "torch.compile":
                    if compiled is None:
                        rows.append(absent(compile_error or "not requested", **keys))
                        continue
                    if compile_budget_s is not None and compile_spent > compile_budget_s:
                        rows.append(skipped(f"compile budget of {compile_budget_s:.0f} s spent ({compile_spent:.0f} s "
                                            f"on first calls); measure it with `python benchmarks/inprocess.py "
                                            f"--engines torch.compile`", **keys))
                        continue

                    def fn(x=x):
                        with torch.inference_mode():
                            compiled(x)
                    t0 = time.perf_counter()
                    try:
                        fn()  # compiles for this shape (or reuses a dynamic-shape graph)
                    except Exception as exc:  # noqa: BLE001
                        compile_error = f"torch.compile failed: {str(exc).splitlines()[0][:200]}"
                        compiled = None
                        rows.append(absent(compile_error, **keys))
                        continue
                    first = time.perf_counter() - t0
                    compile_spent += first
                    t = measure(fn, warmup=warmup, repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds,
                                items=batch)
                    rows.append(_row(engine, batch, size, threads, t, first_call_s=first))
                elif engine == "onnxruntime":
                    if sess is None:
                        rows.append(absent(ort_error or "not requested", **keys))
                        continue
                    xn = x.numpy()
                    t = measure(lambda xn=xn: sess.run(None, {"image": xn}), warmup=warmup, repeats=repeats,
                                min_seconds=min_seconds, max_seconds=max_seconds, items=batch)
                    rows.append(_row(engine, batch, size, threads, t))
                else:
                    raise ValueError(f"unknown engine {engine!r}")
                r = rows[-1]
                log(f"  in-process {engine:13s} {size:4d}² batch {batch:2d}: {r['median_ms']:8.2f} ms  "
                    f"{r['img_s']:8.1f} img/s")
                if on_row:
                    on_row(rows)
    return rows


def sample_png(size: int = 256) -> bytes:
    """One rendered face as PNG bytes: the request body the served benchmark sends too."""
    from PIL import Image

    from ganseg.faces import render_faces, split_seeds

    img, _ = render_faces(split_seeds("test", 1), resolution=size)
    buf = io.BytesIO()
    Image.fromarray(img[0]).save(buf, format="PNG")
    return buf.getvalue()


def real_size_inputs() -> dict[str, bytes]:
    """The photos of the real-size rows (served and in-process send the same bytes): a rendered test
    face as a 128² PNG, and the same face upscaled (bicubic) to a 1920x1080 and a 4000x3000 JPEG
    (quality 90, as a camera writes them)."""
    from PIL import Image

    from ganseg.faces import render_faces, split_seeds

    img, _ = render_faces(split_seeds("test", 1), resolution=128)
    face = Image.fromarray(img[0])
    out = {}
    for name, size, fmt in (("128² PNG", (128, 128), "PNG"), ("1920x1080 JPEG", (1920, 1080), "JPEG"),
                            ("4000x3000 JPEG", (4000, 3000), "JPEG")):
        buf = io.BytesIO()
        im = face if face.size == size else face.resize(size, Image.Resampling.BICUBIC)
        im.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out[name] = buf.getvalue()
    return out


def pipeline_rows(onnx_path: Path | None, png: bytes, *, batches=(1, 4, 8), threads: int = 2, warmup: int = 2,
                  repeats: int = 5, min_seconds: float = 1.0, max_seconds: float | None = 4.0, overlay: bool = True,
                  input_name: str = "PNG bytes", log: Callable[[str], None] = print) -> list[dict]:
    """The served image-bytes path in-process, per stage, with the server's own code
    (`ganseg.pipeline.pre` -> one ONNX Runtime run for the batch -> `ganseg.pipeline.post`): decode
    (at reduced JPEG scale where the photo allows), resize, normalize | network | argmax, MASK at each
    photo's size, and the OVERLAY preview JPEG when `overlay` (what a request asking for it gets)."""
    from ganseg import pipeline as P

    outputs = "MASK + OVERLAY" if overlay else "MASK"
    engine = f"onnxruntime pipeline ({input_name} -> {outputs})"
    if onnx_path is None:
        return [absent("no ONNX file (ganseg.export.onnx_export unavailable)", engine=engine, batch=b,
                       threads=threads) for b in batches]
    sess = ort_session(onnx_path, threads)
    spec = P.UNetSpec.from_metadata(sess.get_modelmeta().custom_metadata_map, str(onnx_path))
    preview = P.PREVIEW_MAX_SIDE if overlay else 0
    rows = []
    for batch in batches:
        items = [png] * batch
        stages: dict[str, list[float]] = {"pre": [], "net": [], "post": []}

        def once(items=items, stages=stages):
            t0 = time.perf_counter()
            b = P.pre(items, spec.input_size, preview=preview)
            x = b.x
            t1 = time.perf_counter()
            logits = sess.run([spec.output_name], {spec.input_name: x})[0]
            t2 = time.perf_counter()
            P.post(logits, b, spec.palette)
            t3 = time.perf_counter()
            for k, a, c in (("pre", t0, t1), ("net", t1, t2), ("post", t2, t3)):
                stages[k].append(c - a)

        t = measure(once, warmup=warmup, repeats=repeats, min_seconds=min_seconds, max_seconds=max_seconds,
                    items=batch)
        med = {k: float(np.median(v[warmup:])) * 1e3 for k, v in stages.items()}
        total = sum(med.values())
        rows.append(_row(engine, batch, spec.input_size, threads, t, stage_ms=med, input=input_name, outputs=outputs,
                         prepost_share=(med["pre"] + med["post"]) / total if total else None, input_bytes=len(png)))
        r = rows[-1]
        log(f"  in-process pipeline {input_name} -> {outputs} batch {batch:2d}: {r['median_ms']:8.2f} ms  "
            f"{r['img_s']:8.1f} img/s  (pre {med['pre']:.1f} / net {med['net']:.1f} / post {med['post']:.1f} ms)")
    return rows


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = markdown_table(["engine", "size", "batch", "threads", "median ms", "p90 ms", "img/s", "first call s"],
                           [[r["engine"], f"{r['size']}²", r["batch"], r["threads"], r["median_ms"], r["p90_ms"],
                             r["img_s"], r.get("first_call_s")] for r in ok],
                           numeric=[False, True, True, True, True, True, True, True], digits=2)
    lines += ("\nmedian/p90 over the timed calls after warm-up; `first call s`: torch.compile's first call at that "
              "shape (compilation, when one happened), never counted in the timings.\n")
    for status in ("absent", "skipped"):
        miss = [r for r in rows if r.get("status") == status]
        if miss:
            reasons = sorted({(r["engine"], r["reason"]) for r in miss})
            lines += (f"\n{status.capitalize()} ({len(miss)} rows): "
                      + "; ".join(f"{e}: {why}" for e, why in reasons) + "\n")
    return lines


def compile_rows_in_child(unet_file: Path, *, sizes: list[int], batches, threads: int, budget_s: float,
                          work: Path, warmup: int = 1, repeats: int = 3, log: Callable[[str], None] = print) -> list[dict]:
    """torch.compile rows measured in a child process with a hard time limit (2 x budget): one slow
    compile on a loaded machine can take minutes and cannot be interrupted in-process. Rows are
    written as they are measured, so a child stopped at the limit still returns what it finished;
    the rest are marked skipped with the reason."""
    import json
    import subprocess

    out = work / "compile_rows.json"
    cmd = [sys.executable, __file__, "--unet", str(unet_file), "--engines", "torch.compile",
           "--sizes", ",".join(map(str, sizes)), "--batches", ",".join(map(str, batches)), "--threads", str(threads),
           "--compile-budget-s", str(budget_s), "--repeats", str(repeats), "--warmup", str(warmup),
           "--rows-json", str(out)]
    import signal

    limit = 2 * budget_s
    # own process group: stopping it at the limit also ends inductor's compile workers
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=limit)
        for line in stdout.splitlines():
            if "in-process" in line:
                log(line)
        failed = p.returncode != 0 and (stderr.strip().splitlines() or ["?"])[-1][:200]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        failed = None
        log(f"  torch.compile child stopped after {limit:.0f} s")
    rows = json.loads(out.read_text()) if out.is_file() else []
    done = {(r["size"], r["batch"]) for r in rows}
    for size in sizes:
        for batch in batches:
            if (size, batch) not in done:
                why = (f"torch.compile child failed: {failed}" if failed else
                       f"compiling did not finish within {limit:.0f} s on this machine; measure it with "
                       f"`python benchmarks/inprocess.py --engines torch.compile`")
                rows.append(skipped(why, engine="torch.compile", batch=batch, size=size, threads=threads))
    return rows


def main(argv: list[str] | None = None) -> int:
    from ganseg.export.triton_repository import ServingConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", default=None, help="UNet run folder or file (default: the bundled one)")
    ap.add_argument("--threads", type=int, default=ServingConfig().ort_threads,
                    help="torch / ONNX Runtime threads (default: the served ganseg_unet's ORT threads)")
    ap.add_argument("--sizes", default="", help="comma list (default: training size, 256, 512)")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--compile-budget-s", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rows-json", default=None, help="only measure the network rows; write them here as they come")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    unet, about = bench_unet(args.unet)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        sorted({int(unet.meta.get("resolution", 64)), 256, 512})
    batches = [int(b) for b in args.batches.split(",")]
    engines = args.engines.split(",")
    if args.rows_json:
        rows = network_rows(unet, None, sizes=sizes, batches=batches, threads=args.threads, engines=engines,
                            warmup=args.warmup, repeats=args.repeats, compile_budget_s=args.compile_budget_s,
                            on_row=lambda rs: write_json(args.rows_json, rs))
        write_json(args.rows_json, rows)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_for_bench(unet, Path(tmp))
        rows = network_rows(unet, onnx_path, sizes=sizes, batches=batches, threads=args.threads, engines=engines,
                            warmup=args.warmup, repeats=args.repeats, compile_budget_s=args.compile_budget_s)
        rows += pipeline_rows(onnx_path, sample_png(), threads=args.threads)
    env = environment()
    out = Path(args.out)
    write_json(out / "inprocess.json", {"environment": env, "unet": about, "rows": rows})
    write_text(out / "inprocess.md", environment_markdown(env) + f"\nUNet: {about}.\n\n" + table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
