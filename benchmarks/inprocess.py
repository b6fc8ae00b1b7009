"""In-process baselines for the served UNet: torch eager, torch.compile and ONNX Runtime.

Why: a served figure means little alone. What a user wants to know is what the server costs over
calling the same model in their own process, so the baselines use the same network (the exported
ONNX file of the same UNet), the same thread count as the server's model instance, and the same
batches (1, 4, 8, 16) at the UNet's training size (the size the server runs it at), 256² and 512².

Besides the bare network (float NCHW in, logits out) one row measures the whole image-bytes path
in-process — decode, resize to the training size, normalize, network, argmax, resize the labels
back, PNG-encode — with its stage split, the in-process counterpart of the served `IMAGE -> MASK`
entry point.

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
from typing import Any, Callable

import numpy as np

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


def ort_session(onnx_path: str | os.PathLike, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def _row(engine: str, batch: int, size: int, threads: int, timing, **extra) -> dict:
    s = timing.summary()
    return {"engine": engine, "batch": batch, "size": size, "threads": threads, "status": "ok",
            "median_ms": s["median_ms"], "p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"],
            "img_s": s["items_per_s"], "repeats": s["repeats"], "warmup": s["warmup"], **extra}


def network_rows(unet, onnx_path: Path | None, *, sizes: list[int], batches=BATCHES, threads: int = 2,
                 engines=ENGINES, warmup: int = 2, repeats: int = 5, min_seconds: float = 0.5,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Bare-network rows: float32 [B,3,S,S] in, logits out, per engine x size x batch."""
    import torch

    torch.set_num_threads(threads)
    rows: list[dict] = []
    unet = unet.eval()
    compiled, compile_error = None, None
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
            compiled = torch.compile(unet)
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
                    t = measure(fn, warmup=warmup, repeats=repeats, min_seconds=min_seconds, items=batch)
                    rows.append(_row(engine, batch, size, threads, t))
                elif engine == "torch.compile":
                    if compiled is None:
                        rows.append(absent(compile_error or "not requested", **keys))
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
                    t = measure(fn, warmup=warmup, repeats=repeats, min_seconds=min_seconds, items=batch)
                    rows.append(_row(engine, batch, size, threads, t, first_call_s=first))
                elif engine == "onnxruntime":
                    if sess is None:
                        rows.append(absent(ort_error or "not requested", **keys))
                        continue
                    xn = x.numpy()
                    t = measure(lambda xn=xn: sess.run(None, {"image": xn}), warmup=warmup, repeats=repeats,
                                min_seconds=min_seconds, items=batch)
                    rows.append(_row(engine, batch, size, threads, t))
                else:
                    raise ValueError(f"unknown engine {engine!r}")
                r = rows[-1]
                log(f"  in-process {engine:13s} {size:4d}² batch {batch:2d}: {r['median_ms']:8.2f} ms  "
                    f"{r['img_s']:8.1f} img/s")
    return rows


def sample_png(size: int = 256) -> bytes:
    """One rendered face as PNG bytes: the request body the served benchmark sends too."""
    from PIL import Image

    from ganseg.faces import render_faces, split_seeds

    img, _ = render_faces(split_seeds("test", 1), resolution=size)
    buf = io.BytesIO()
    Image.fromarray(img[0]).save(buf, format="PNG")
    return buf.getvalue()


def pipeline_row(onnx_path: Path | None, png: bytes, *, threads: int = 2, warmup: int = 3, repeats: int = 20,
                 min_seconds: float = 1.0) -> dict:
    """The image-bytes path in-process (ONNX Runtime net), per stage; batch 1 like one served request."""
    from PIL import Image

    from ganseg.images import decode_rgb, resize_rgb

    keys = dict(engine="onnxruntime pipeline (bytes -> PNG mask)", batch=1, threads=threads)
    if onnx_path is None:
        return absent("no ONNX file (ganseg.export.onnx_export unavailable)", **keys)
    from ganseg.export.onnx_export import read_metadata

    meta = read_metadata(onnx_path)
    size, mult = int(meta["input_size"]), int(meta["size_multiple"])
    sess = ort_session(onnx_path, threads)
    stages = {"pre": [], "net": [], "post": []}

    def once():
        t0 = time.perf_counter()
        img = decode_rgb(png)
        x = resize_rgb(img, size)[None].astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
        t1 = time.perf_counter()
        logits = sess.run(None, {"image": np.ascontiguousarray(x)})[0]
        t2 = time.perf_counter()
        lab = logits[0].argmax(0).astype(np.uint8)
        lab = np.asarray(Image.fromarray(lab).resize((img.shape[1], img.shape[0]), Image.Resampling.NEAREST))
        buf = io.BytesIO()
        Image.fromarray(lab).save(buf, format="PNG")
        t3 = time.perf_counter()
        for k, a, b in (("pre", t0, t1), ("net", t1, t2), ("post", t2, t3)):
            stages[k].append(b - a)

    t = measure(once, warmup=warmup, repeats=repeats, min_seconds=min_seconds)
    for v in stages.values():
        del v[:warmup]
    med = {k: float(np.median(v)) * 1e3 for k, v in stages.items()}
    total = sum(med.values())
    row = _row(keys["engine"], 1, size, threads, t, stage_ms=med,
               pre_post_share=(med["pre"] + med["post"]) / total if total else None,
               input_bytes=len(png), multiple=mult)
    return row


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = markdown_table(["engine", "size", "batch", "threads", "median ms", "p90 ms", "img/s"],
                           [[r["engine"], f"{r['size']}²", r["batch"], r["threads"], r["median_ms"], r["p90_ms"],
                             r["img_s"]] for r in ok], numeric=[False, True, True, True, True, True, True], digits=2)
    miss = [r for r in rows if r.get("status") == "absent"]
    if miss:
        reasons = sorted({(r["engine"], r["reason"]) for r in miss})
        lines += "\nAbsent: " + "; ".join(f"{e}: {why}" for e, why in reasons) + "\n"
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", default=None, help="UNet run folder or file (default: the bundled one)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--sizes", default="", help="comma list (default: training size, 256, 512)")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    unet, about = bench_unet(args.unet)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else \
        sorted({int(unet.meta.get("resolution", 64)), 256, 512})
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_for_bench(unet, Path(tmp))
        rows = network_rows(unet, onnx_path, sizes=sizes, batches=[int(b) for b in args.batches.split(",")],
                            threads=args.threads, engines=args.engines.split(","))
        rows.append(pipeline_row(onnx_path, sample_png(), threads=args.threads))
    env = environment()
    out = Path(args.out)
    write_json(out / "inprocess.json", {"environment": env, "unet": about, "rows": rows})
    write_text(out / "inprocess.md", environment_markdown(env) + f"\nUNet: {about}.\n\n" + table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
