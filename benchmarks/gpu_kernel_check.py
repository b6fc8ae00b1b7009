"""Parity and timings of the CUDA resample-accumulate kernel: the check issue 13's GPU run executes.

Why a prepared script: GPU minutes are scarce (one ~15-minute window), so everything that can go
wrong on CPU is exercised first by `--smoke` (tests/test_cuda_kernel.py runs it), and the GPU run
only builds the extension and measures.

Full mode (a CUDA device; ~2-3 minutes on an H100 including the extension build):
- features of a 1024² config-f-width generator (`Generator(GeneratorConfig(resolution=1024))`,
  random weights: widths, not values, set the cost), computed once, batch 1;
- parity against the torch fused op in float64 (exact maths, mathematically equal to the
  materialized stack; tests/test_ops.py pins that to 1e-10): FP32 must be <= 1e-5 relative to max
  |reference|, FP16/BF16 within their precision (<= 8 unit roundoffs, or no worse than the torch op
  in the same dtype). TF32 is switched off so "FP32" means FP32. Also the labeling variant
  (labels agree, confidence close) and the kernel's own area-down branch (projected maps above the
  output size, which the op dispatch pools before projecting and so never sends to the kernel);
- timings with CUDA events after warm-up, median of repeats: the kernel path (GEMMs + one kernel)
  vs the torch fused op vs the materialized stack + 1x1 conv, at 256², 512², 1024² outputs, FP32
  and BF16, plus the labeling variant vs torch (fused op + softmax + argmax) and peak extra memory.
Smoke mode (`--smoke`, CPU, seconds): a 32² generator, tiny sizes, torch vs reference, every dtype
once; every kernel row is written as absent with the reason.

Writes gpu_kernel_check.json and gpu_kernel_check.md under --out (atomically, with the device,
versions and commit); exits 1 if a measured parity check fails.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import absent, environment, environment_markdown, markdown_table, measure, write_json, write_text  # noqa: E402

from ganseg import ops, ops_cuda  # noqa: E402
from ganseg.stylegan2 import Generator, GeneratorConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
FP32_TOL = 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="result folder (default: benchmarks/results/gpu_kernel_check[_smoke])")
    p.add_argument("--smoke", action="store_true", help="CPU smoke mode: tiny sizes, seconds, no kernel")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="output sizes (default 256 512 1024; smoke 16 32 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=128, help="K of the fused op (a CNN head's first layer)")
    p.add_argument("--classes", type=int, default=10, help="K of the labeling variant (a linear head)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-materialized", action="store_true", help="skip the materialized-stack timings")
    return p.parse_args(argv)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


class Timer:
    """CUDA events around each call on a GPU (after warm-up and a sync); perf_counter on CPU."""

    def __init__(self, device: torch.device, warmup: int, repeats: int):
        self.device, self.warmup, self.repeats = device, warmup, repeats

    def __call__(self, fn) -> dict:
        if self.device.type != "cuda":
            t = measure(fn, warmup=self.warmup, repeats=self.repeats)
            return {"median_ms": 1e3 * t.median, "min_ms": 1e3 * min(t.samples), "repeats": len(t.samples),
                    "clock": "perf_counter"}
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize(self.device)
        ms = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms.append(start.elapsed_time(end))
        return {"median_ms": statistics.median(ms), "min_ms": min(ms), "repeats": len(ms), "clock": "cuda events"}


def peak_extra_mib(device: torch.device, fn) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - base) / 2**20


def generator_features(args, device: torch.device) -> tuple[list[torch.Tensor], dict]:
    if args.smoke:
        cfg = GeneratorConfig(resolution=32, channels=[32, 32, 16, 16], z_dim=64, w_dim=64, mapping_layers=2)
    else:
        cfg = GeneratorConfig(resolution=1024)  # config-f widths: 512 up to 64², then 256, 128, 64, 32
    torch.manual_seed(0)
    G = Generator(cfg).to(device).eval()
    with torch.no_grad():
        z = torch.randn(args.batch, cfg.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
        if hasattr(G, "synthesize_features"):
            _, feats = G.synthesize_features(z=z)
        else:  # the API before issue 9's return-convention change
            _, feats = G.synthesize(z=z, return_features=True)
    info = {"resolution": cfg.resolution, "layers": len(feats), "channels": sum(f.shape[1] for f in feats),
            "resolutions": sorted({f.shape[-1] for f in feats})}
    del G
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [f.detach().float().contiguous() for f in feats], info


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        sizes = args.sizes or [16, 32, 64]
        args.repeats, args.warmup = min(args.repeats, 3), min(args.warmup, 1)
        args.channels = min(args.channels, 16)
    else:
        if not torch.cuda.is_available():
            print("gpu_kernel_check: no CUDA device visible to torch; run with --smoke on CPU", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        sizes = args.sizes or [256, 512, 1024]
        torch.backends.cuda.matmul.allow_tf32 = False  # FP32 parity means FP32 GEMMs and convs
        torch.backends.cudnn.allow_tf32 = False
    out_dir = args.out or Path(__file__).resolve().parent / "results" / (
        "gpu_kernel_check_smoke" if args.smoke else "gpu_kernel_check")
    env = environment(benchmark="gpu_kernel_check", mode="smoke" if args.smoke else "full")

    # the kernel: build it now (timed), or record why not
    kernel_reason = None
    build_s = None
    if device.type != "cuda":
        kernel_reason = ops_cuda.unavailable_reason() or "smoke mode runs on CPU"
    else:
        t0 = time.perf_counter()
        try:
            ops_cuda.load(verbose=False)
            build_s = time.perf_counter() - t0
        except RuntimeError as exc:
            kernel_reason = str(exc)
    print(f"kernel: {'built/loaded in %.1f s' % build_s if kernel_reason is None else 'absent: ' + kernel_reason}",
          flush=True)

    feats, ginfo = generator_features(args, device)
    print(f"features: {ginfo['layers']} layers, {ginfo['channels']} channels, resolutions {ginfo['resolutions']}",
          flush=True)
    total_c = ginfo["channels"]
    g = torch.Generator().manual_seed(2)
    K, L = args.channels, args.classes
    w_head = (torch.randn(K, total_c, generator=g) / total_c**0.5).to(device)
    b_head = (0.1 * torch.randn(K, generator=g)).to(device)
    w_lin = (torch.randn(L, total_c, generator=g) / total_c**0.5).to(device)
    b_lin = (0.1 * torch.randn(L, generator=g)).to(device)
    timer = Timer(device, args.warmup, args.repeats)
    parity: list[dict] = []
    timings: list[dict] = []
    impls = ("cuda", "torch", "reference")

    error = None
    try:  # a CUDA fault (e.g. an illegal address in the kernel) must still leave a result file
        for size in sizes:
            feats64 = [f.double() for f in feats]
            with torch.no_grad():
                ref = ops.resample_accumulate(feats64, w_head.double(), b_head.double(), size, activation="lrelu",
                                              impl="torch")
                ref_logits = ops.resample_accumulate(feats64, w_lin.double(), b_lin.double(), size, impl="torch")
            del feats64
            for dname, dtype in DTYPES.items():
                if args.smoke and dname != "fp32" and size != sizes[0]:
                    continue  # smoke: every dtype's code path once, at the smallest size
                fd = [f.to(dtype) for f in feats]
                wd, bd = w_head.to(dtype), b_head.to(dtype)
                errs = {}
                for impl in impls:
                    row = {"check": "fused op", "impl": impl, "dtype": dname, "size": size, "K": K, "activation": "lrelu"}
                    if impl == "cuda" and kernel_reason:
                        parity.append(absent(kernel_reason, **row))
                        continue
                    if impl == "reference" and dname != "fp32":
                        continue
                    try:
                        with torch.no_grad():
                            out = ops.resample_accumulate(fd, wd, bd, size, activation="lrelu", impl=impl)
                    except torch.cuda.OutOfMemoryError as exc:
                        parity.append(absent(f"out of GPU memory: {str(exc).splitlines()[0]}", **row))
                        continue
                    errs[impl] = rel_err(out, ref)
                    del out
                    tol = FP32_TOL if dname == "fp32" else 8 * UNIT_ROUNDOFF[dname]
                    parity.append({**row, "status": "ok", "rel_err": errs[impl], "tol": tol})
                for row in parity:  # low precision: pass if within tol or no worse than torch in the same dtype
                    if row.get("status") == "ok" and row["size"] == size and row["dtype"] == dname and "pass" not in row:
                        bound = row["tol"] if dname == "fp32" else max(row["tol"], 1.5 * errs.get("torch", 0.0))
                        row["pass"] = row["rel_err"] <= bound
                # labeling variant (linear head): labels vs float64 argmax, confidence vs float64 softmax max
                for impl in ("cuda", "torch"):
                    row = {"check": "label variant", "impl": impl, "dtype": dname, "size": size, "K": L}
                    if impl == "cuda" and kernel_reason:
                        parity.append(absent(kernel_reason, **row))
                        continue
                    with torch.no_grad():
                        labels, conf = ops.resample_label(fd, w_lin.to(dtype), b_lin.to(dtype), size, impl=impl)
                    agree = (labels.long() == ref_logits.argmax(1)).double().mean().item()
                    cerr = (conf.double() - ref_logits.softmax(1).amax(1)).abs().max().item()
                    need = 0.9999 if dname == "fp32" else 0.99
                    parity.append({**row, "status": "ok", "label_agreement": agree, "conf_max_abs_err": cerr,
                                   "pass": agree >= need and cerr <= (1e-4 if dname == "fp32" else 5e-2)})
                # the kernel's area-down branch: projected maps at every resolution, some above `size`
                row = {"check": "projected maps incl. r > size (area in kernel)", "impl": "cuda", "dtype": dname,
                       "size": size, "K": L}
                if kernel_reason:
                    parity.append(absent(kernel_reason, **row))
                else:
                    with torch.no_grad():
                        maps = [ops.project_1x1(f, w).contiguous() for f, w in
                                zip(fd, ops.split_weight(w_lin.to(dtype), [f.shape[1] for f in fd]))]
                        by_res: dict[int, torch.Tensor] = {}
                        for m in maps:
                            r = m.shape[-1]
                            by_res[r] = m if r not in by_res else by_res[r] + m
                        maps = [by_res[r] for r in sorted(by_res)]
                        pref = ops.resample_projected([m.double() for m in maps], b_lin.double(), size, impl="torch")
                        pout = ops.resample_projected(maps, b_lin.to(dtype), size, impl="cuda")
                    e = rel_err(pout, pref)
                    tol = FP32_TOL if dname == "fp32" else 8 * UNIT_ROUNDOFF[dname]
                    parity.append({**row, "status": "ok", "rel_err": e, "tol": tol, "pass": e <= tol,
                                   "max_map_res": max(by_res)})
                    del maps, by_res, pref, pout
                del fd
            del ref, ref_logits

            # timings: FP32 and BF16 (smoke: FP32)
            for dname in (("fp32", "bf16") if not args.smoke or size == sizes[0] else ("fp32",)):
                dtype = DTYPES[dname]
                fd = [f.to(dtype) for f in feats]
                wd, bd = w_head.to(dtype), b_head.to(dtype)
                for impl in impls:
                    row = {"op": "fused op (K=%d, lrelu)" % K, "impl": impl, "dtype": dname, "size": size,
                           "batch": args.batch}
                    if impl == "cuda" and kernel_reason:
                        timings.append(absent(kernel_reason, **row))
                        continue
                    if impl == "reference" and args.no_materialized:
                        timings.append(absent("--no-materialized", **row))
                        continue

                    def call(impl=impl):
                        with torch.no_grad():
                            return ops.resample_accumulate(fd, wd, bd, size, activation="lrelu", impl=impl)
                    try:
                        t = timer(call)
                        mem = peak_extra_mib(device, call)
                    except torch.cuda.OutOfMemoryError as exc:
                        timings.append(absent(f"out of GPU memory: {str(exc).splitlines()[0]}", **row))
                        torch.cuda.empty_cache()
                        continue
                    timings.append({**row, "status": "ok", **t, "peak_extra_mib": mem})
                    print(f"  {row['op']} {impl:9s} {dname} {size}²: {t['median_ms']:.3f} ms", flush=True)
                def kernel_vs_torch(op: str, run) -> None:
                    """One timing row per impl ("cuda", "torch") of run(impl) -> output."""
                    for impl in ("cuda", "torch"):
                        row = {"op": op, "impl": impl, "dtype": dname, "size": size, "batch": args.batch}
                        if impl == "cuda" and kernel_reason:
                            timings.append(absent(kernel_reason, **row))
                            continue

                        def call(impl=impl):
                            with torch.no_grad():
                                return run(impl)
                        t = timer(call)
                        timings.append({**row, "status": "ok", **t, "peak_extra_mib": peak_extra_mib(device, call)})
                        print(f"  {op} {impl:9s} {dname} {size}²: {t['median_ms']:.3f} ms", flush=True)

                kernel_vs_torch("label variant (K=%d)" % L,
                                lambda impl: ops.resample_label(fd, w_lin.to(dtype), b_lin.to(dtype), size, impl=impl))
                # the accumulation step alone (projections done): the kernel vs torch resize + add
                with torch.no_grad():
                    maps = ops.project_by_resolution(fd, wd, size)
                kernel_vs_torch("accumulate only (projected maps)",
                                lambda impl: ops.resample_projected(maps, bd, size, activation="lrelu", impl=impl))
                del fd, maps
    except Exception:  # noqa: BLE001 - recorded with its traceback, and the exit code says so
        error = traceback.format_exc()
        print(error, file=sys.stderr, flush=True)

    # speed-ups vs the torch fused op (same op, dtype, size)
    base = {(r["op"], r["dtype"], r["size"]): r["median_ms"] for r in timings
            if r.get("status") == "ok" and r["impl"] == "torch"}
    for r in timings:
        if r.get("status") == "ok" and (r["op"], r["dtype"], r["size"]) in base:
            r["speedup_vs_torch"] = base[(r["op"], r["dtype"], r["size"])] / r["median_ms"]

    failed = [r for r in parity if r.get("status") == "ok" and not r["pass"]]
    result = {"benchmark": "gpu_kernel_check", "mode": "smoke" if args.smoke else "full", "env": env,
              "device": env["gpu"].get("name") if device.type == "cuda" else "cpu",
              "generator": ginfo, "batch": args.batch, "kernel": {"available": kernel_reason is None,
                                                                  "reason": kernel_reason, "build_or_load_s": build_s},
              "tf32": False if device.type == "cuda" else None,
              "parity": parity, "timings": timings, "all_parity_pass": not failed and error is None,
              "error": error}
    write_json(out_dir / "gpu_kernel_check.json", result)
    write_text(out_dir / "gpu_kernel_check.md", render_markdown(result))
    print(f"wrote {out_dir / 'gpu_kernel_check.json'} and .md; parity {'PASS' if not failed else 'FAIL'}"
          f" ({sum(r.get('status') == 'ok' for r in parity)} measured, {len(failed)} failed)", flush=True)
    return 1 if failed or error else 0


def render_markdown(res: dict) -> str:
    k = res["kernel"]
    lines = [f"# CUDA resample-accumulate kernel: parity and timings ({res['mode']} mode)\n",
             environment_markdown(res["env"]),
             f"Generator: {res['generator']['resolution']}² ({res['generator']['layers']} feature layers, "
             f"{res['generator']['channels']} channels), batch {res['batch']}. Kernel: "
             + (f"built/loaded in {k['build_or_load_s']:.1f} s." if k["available"] else f"absent ({k['reason']}).")
             + (" TF32 off." if res["tf32"] is False else "") + "\n",
             (f"**Stopped by an error** (results below are partial):\n\n```\n{res['error']}```\n" if res.get("error")
              else ""),
             "## Parity (relative error = max |out - ref| / max |ref|, ref = torch fused op in float64)\n"]
    rows = []
    for r in res["parity"]:
        if r["status"] != "ok":
            rows.append([r["check"], r["impl"], r["dtype"], r["size"], "absent", "", r["reason"]])
        elif "rel_err" in r:
            rows.append([r["check"], r["impl"], r["dtype"], r["size"], f"{r['rel_err']:.2e}", f"{r['tol']:.1e}",
                         "pass" if r["pass"] else "FAIL"])
        else:
            rows.append([r["check"], r["impl"], r["dtype"], r["size"],
                         f"labels {100 * r['label_agreement']:.3f} %", f"conf err {r['conf_max_abs_err']:.1e}",
                         "pass" if r["pass"] else "FAIL"])
    lines.append(markdown_table(["check", "impl", "dtype", "size", "error", "tolerance", "result"], rows,
                                numeric=[False, False, False, True, True, True, False]))
    lines.append("\n## Timings (median ms per call; CUDA events after warm-up)\n")
    rows = []
    for r in res["timings"]:
        if r["status"] != "ok":
            rows.append([r["op"], r["impl"], r["dtype"], r["size"], None, None, None, "absent: " + r["reason"]])
        else:
            rows.append([r["op"], r["impl"], r["dtype"], r["size"], r["median_ms"], r.get("speedup_vs_torch"),
                         r.get("peak_extra_mib"), ""])
    lines.append(markdown_table(["op", "impl", "dtype", "size", "median ms", "x torch", "peak extra MiB", "note"],
                                rows, numeric=[False, False, False, True, True, True, True, False], digits=3))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
