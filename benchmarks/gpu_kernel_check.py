"""Parity, timings and roofline of the CUDA fused feature step: the check a GPU run executes (tools/gpu_pass.py).

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
- timings after warm-up, median of repeats, either per call between CUDA events or (default,
  `--timing one-sync`, for short kernels) one synchronize before and after N back-to-back calls:
  the kernel path (two launches, projection on tensor cores) vs the torch fused op vs the
  materialized stack + 1x1 conv, at 512², 1024², 256² outputs, FP32 (3xTF32 on the tensor cores,
  FP32-accurate) and BF16, the same kernel path replayed from one CUDA graph, the labeling variant
  vs torch, the plugin kernel on projected maps, and peak extra memory;
- for every row the roofline: its FLOPs and bytes (`step_cost`) against the peak tensor-core
  FLOP/s and HBM bandwidth of the device it runs on (`PEAKS`, by device name; an unknown device is
  said so and gets no bound), printed as bound ms and measured / bound;
- the generator's own synthesis time (batch 1, same dtype settings), and the labeling overhead
  (kernel time / generator time; the goal is <= 15 %);
- `--budget-s`: stop starting new sizes once that many seconds have passed (the results so far
  are written; the sizes left out are listed), so tools/gpu_pass.py can fit the stage to its time.
Smoke mode (`--smoke`, CPU, seconds): a 32² generator, tiny sizes, torch vs reference, every dtype
once; every kernel row is written as absent with the reason.

Writes gpu_kernel_check.json and gpu_kernel_check.md under --out (atomically, with the device,
versions and commit); exits 1 if a measured parity check fails.
"""
from __future__ import annotations

import argparse
import gc
import statistics
from dataclasses import dataclass
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (absent, environment, environment_markdown, markdown_table, measure, pyplot, save_figure,  # noqa: E402
                    write_json, write_text)

from ganseg import ops, ops_cuda  # noqa: E402
from ganseg.stylegan2 import Generator, GeneratorConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
FP32_TOL = 1e-5
TF32_TOL = 8 * 2.0**-11  # plain TF32: 10 explicit mantissa bits per operand


# --------------------------------------------------------------------------------------------
# Roofline

@dataclass(frozen=True)
class Peak:
    """Dense (no sparsity) peak throughput of one device, from NVIDIA's data sheets."""
    name: str
    fp32_tflops: float   # CUDA cores
    tf32_tflops: float   # tensor cores
    bf16_tflops: float   # tensor cores, FP16 the same
    hbm_tb_s: float


# matched in order against torch.cuda.get_device_name(): the first entry whose every token occurs
PEAKS: tuple[tuple[tuple[str, ...], Peak], ...] = (
    (("H200",), Peak("H200 SXM", 67.0, 494.7, 989.4, 4.8)),
    (("H100", "PCIe"), Peak("H100 PCIe", 51.2, 378.0, 756.0, 2.0)),
    (("H100", "NVL"), Peak("H100 NVL", 60.0, 417.5, 835.0, 3.9)),
    (("H100",), Peak("H100 SXM", 67.0, 494.7, 989.4, 3.35)),
    (("A100", "40GB"), Peak("A100 40GB", 19.5, 156.0, 312.0, 1.555)),
    (("A100",), Peak("A100 80GB", 19.5, 156.0, 312.0, 2.039)),
)


def peak_for(device_name: str | None) -> Peak | None:
    """The PEAKS entry of a device name ("NVIDIA H100 80GB HBM3" -> H100 SXM), or None if unknown."""
    for tokens, peak in PEAKS:
        if device_name and all(t.lower() in device_name.lower() for t in tokens):
            return peak
    return None


def tensor_core_mode(dtype: torch.dtype, passes: int) -> str:
    """How the kernel's projection runs: "BF16"/"FP16" MMAs, or "TF32" / "3xTF32" for FP32 inputs."""
    if dtype == torch.float32:
        return "3xTF32" if passes == 3 else "TF32"
    return {torch.bfloat16: "BF16", torch.float16: "FP16"}[dtype]


def step_cost(shapes: list[tuple[int, int, int]], batch: int, k: int, size: int, elt_bytes: int,
              labeling: bool = False) -> dict:
    """FLOPs and HBM bytes the fused step cannot avoid: every feature read once, the projection at
    min(r, size)² per layer (area-down first, as the kernel does), the output written once (labels:
    1 + 4 + 4 bytes per pixel), the weight read once. `shapes`: (C_l, r_l, layer count 1) tuples."""
    flops = sum(2 * batch * k * c * min(r, size) ** 2 for c, r, _ in shapes)
    read = sum(batch * c * r * r * elt_bytes for c, r, _ in shapes) + k * sum(c for c, _, _ in shapes) * elt_bytes
    write = batch * size * size * (9 if labeling else k * elt_bytes)
    return {"flops": flops, "bytes": read + write}


def roofline(cost: dict, peak: Peak | None, mode: str) -> dict:
    """Bound (ms) = max(FLOPs / tensor-core peak of `mode`, bytes / HBM bandwidth); 3xTF32 issues
    three TF32 MMAs per product. None with a reason for an unknown device."""
    if peak is None:
        return {"bound_ms": None, "bound_by": "unknown device (no PEAKS entry)"}
    tflops = {"BF16": peak.bf16_tflops, "FP16": peak.bf16_tflops, "TF32": peak.tf32_tflops,
              "3xTF32": peak.tf32_tflops / 3, "FP32": peak.fp32_tflops}.get(mode)
    if tflops is None and cost["flops"]:
        raise ValueError(f"no peak for math mode {mode!r} (a row with FLOPs needs BF16, FP16, TF32, 3xTF32 or FP32)")
    compute_ms = cost["flops"] / (tflops * 1e12) * 1e3 if cost["flops"] else 0.0
    memory_ms = cost["bytes"] / (peak.hbm_tb_s * 1e12) * 1e3
    return {"bound_ms": max(compute_ms, memory_ms), "compute_ms": compute_ms, "memory_ms": memory_ms,
            "bound_by": "compute" if compute_ms >= memory_ms else "memory"}


# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="result folder (default: benchmarks/results/gpu_kernel_check[_smoke])")
    p.add_argument("--smoke", action="store_true", help="CPU smoke mode: tiny sizes, seconds, no kernel")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="output sizes, in this order (default 512 1024 256; smoke 16 32 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--channels", type=int, default=128, help="K of the fused op (a CNN head's first layer)")
    p.add_argument("--classes", type=int, default=10, help="K of the labeling variant (a linear head)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="timed repeats (one-sync: calls between the two syncs)")
    p.add_argument("--timing", choices=("one-sync", "events"), default="one-sync",
                   help="one-sync: one synchronize before and after N calls (short kernels); events: CUDA "
                        "events around each call")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new output size after this many seconds (results so far are kept)")
    p.add_argument("--no-materialized", action="store_true", help="skip the materialized-stack timings")
    p.add_argument("--materialized-max-size", type=int, default=512,
                   help="time the materialized stack only up to this size (1024²: seconds per call, ~44 GB)")
    return p.parse_args(argv)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


class Timer:
    """Milliseconds per call after warm-up. CUDA: "events" = CUDA events around each call (median
    of `repeats`); "one-sync" = one synchronize, then `repeats` calls back to back between two
    events, then one synchronize (the mean per call: launch gaps of short kernels overlap as they
    do in a pipeline; median of 3 such runs). CPU: perf_counter around each call."""

    def __init__(self, device: torch.device, warmup: int, repeats: int, mode: str = "one-sync"):
        self.device, self.warmup, self.repeats, self.mode = device, warmup, repeats, mode

    def __call__(self, fn) -> dict:
        if self.device.type != "cuda":
            t = measure(fn, warmup=self.warmup, repeats=self.repeats)
            return {"median_ms": 1e3 * t.median, "min_ms": 1e3 * min(t.samples), "repeats": len(t.samples),
                    "clock": "perf_counter"}
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize(self.device)
        ms = []
        if self.mode == "one-sync":
            for _ in range(3):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(self.device)
                start.record()
                for _ in range(self.repeats):
                    fn()
                end.record()
                torch.cuda.synchronize(self.device)
                ms.append(start.elapsed_time(end) / self.repeats)
            return {"median_ms": statistics.median(ms), "min_ms": min(ms), "repeats": 3 * self.repeats,
                    "clock": f"one sync per {self.repeats} calls"}
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


def graph_of(fn):
    """fn captured in one CUDA graph (warm-up on a side stream first, as torch.cuda.graphs asks):
    the proof that the step has no host sync and no shape-dependent allocation. Returns replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def make_generator(args, device: torch.device):
    if args.smoke:
        cfg = GeneratorConfig(resolution=32, channels=[32, 32, 16, 16], z_dim=64, w_dim=64, mapping_layers=2)
    else:
        cfg = GeneratorConfig(resolution=1024)  # config-f widths: 512 up to 64², then 256, 128, 64, 32
    torch.manual_seed(0)
    G = Generator(cfg).to(device).eval()
    z = torch.randn(args.batch, cfg.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
    return G, z


def generator_features(G, z) -> tuple[list[torch.Tensor], dict]:
    with torch.no_grad():
        _, feats = G.synthesize_features(z=z)
    info = {"resolution": G.resolution, "layers": len(feats), "channels": sum(f.shape[1] for f in feats),
            "resolutions": sorted({f.shape[-1] for f in feats})}
    return [f.detach().float().contiguous() for f in feats], info


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
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
        sizes = args.sizes or [512, 1024, 256]
        torch.backends.cuda.matmul.allow_tf32 = False  # FP32 parity means FP32 GEMMs and convs (kernel: 3xTF32)
        torch.backends.cudnn.allow_tf32 = False
    out_dir = args.out or Path(__file__).resolve().parent / "results" / (
        "gpu_kernel_check_smoke" if args.smoke else "gpu_kernel_check")
    env = environment(benchmark="gpu_kernel_check", mode="smoke" if args.smoke else "full")
    device_name = env["gpu"].get("name") if device.type == "cuda" else None
    peak = peak_for(device_name)
    print(f"device: {device_name or 'cpu'}; roofline peaks: "
          f"{peak if peak else 'unknown device (no PEAKS entry): no bound, no ratio'}", flush=True)

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

    G, z = make_generator(args, device)
    feats, ginfo = generator_features(G, z)
    print(f"features: {ginfo['layers']} layers, {ginfo['channels']} channels, resolutions {ginfo['resolutions']}",
          flush=True)
    shapes = [(f.shape[1], f.shape[-1], 1) for f in feats]
    total_c = ginfo["channels"]
    g = torch.Generator().manual_seed(2)
    K, L = args.channels, args.classes
    w_head = (torch.randn(K, total_c, generator=g) / total_c**0.5).to(device)
    b_head = (0.1 * torch.randn(K, generator=g)).to(device)
    w_lin = (torch.randn(L, total_c, generator=g) / total_c**0.5).to(device)
    b_lin = (0.1 * torch.randn(L, generator=g)).to(device)
    timer = Timer(device, args.warmup, args.repeats, args.timing)
    parity: list[dict] = []
    timings: list[dict] = []
    impls = ("cuda", "torch", "reference")
    skipped: list[int] = []

    def timed_row(row: dict, call, cost: dict | None, mode: str | None) -> None:
        """Time call() into a row with its roofline; OOM is recorded as the reason."""
        try:
            t = timer(call)
            mem = peak_extra_mib(device, call)
        except torch.cuda.OutOfMemoryError as exc:
            timings.append(absent(f"out of GPU memory: {str(exc).splitlines()[0]}", **row))
            torch.cuda.empty_cache()
            return
        rl = roofline(cost, peak, mode) if cost is not None else {"bound_ms": None, "bound_by": "not modelled"}
        ratio = t["median_ms"] / rl["bound_ms"] if rl.get("bound_ms") else None
        timings.append({**row, "status": "ok", **t, "peak_extra_mib": mem, "tensor_cores": mode,
                        **({"flops": cost["flops"], "bytes": cost["bytes"]} if cost else {}), **rl,
                        "x_bound": ratio})
        print(f"  {row['op']} {row['impl']:11s} {row['dtype']} {row['size']}²: {t['median_ms']:.3f} ms"
              + (f" (bound {rl['bound_ms']:.3f} ms, {rl['bound_by']}; x{ratio:.2f})" if ratio else ""), flush=True)

    error = None
    try:  # a CUDA fault (e.g. an illegal address in the kernel) must still leave a result file
        with torch.no_grad():
            gen_row = {"op": f"generator synthesis ({G.resolution}², features)", "impl": "torch", "dtype": "fp32",
                       "size": G.resolution, "batch": args.batch}
            timed_row(gen_row, lambda: G.synthesize_features(z=z), None, None)  # noqa: F821 (called before del G)
        del G
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for size in sizes:
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                skipped.append(size)
                continue
            feats64 = [f.double() for f in feats]
            with torch.no_grad():
                ref = ops.resample_accumulate(feats64, w_head.double(), b_head.double(), size, activation="lrelu",
                                              impl="torch")
                ref_logits = ops.resample_accumulate(feats64, w_lin.double(), b_lin.double(), size, impl="torch")
                ref_p = ref_logits.softmax(1)
                ref_ent = -(ref_p * ref_p.clamp_min(1e-300).log()).sum(1)
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
                    mode = tensor_core_mode(dtype, ops.tf32_passes()) if impl == "cuda" else None
                    parity.append({**row, "status": "ok", "rel_err": errs[impl], "tol": tol, "tensor_cores": mode})
                for row in parity:  # low precision: pass if within tol or no worse than torch in the same dtype
                    if row.get("status") == "ok" and row["size"] == size and row["dtype"] == dname and "pass" not in row:
                        bound = row["tol"] if dname == "fp32" else max(row["tol"], 1.5 * errs.get("torch", 0.0))
                        row["pass"] = row["rel_err"] <= bound
                if dname == "fp32":  # plain TF32, as with torch.backends.cuda.matmul.allow_tf32 = True
                    row = {"check": "fused op, allow_tf32", "impl": "cuda", "dtype": dname, "size": size, "K": K,
                           "activation": "lrelu", "tensor_cores": "TF32"}
                    if kernel_reason:
                        parity.append(absent(kernel_reason, **row))
                    else:
                        torch.backends.cuda.matmul.allow_tf32 = True
                        try:
                            with torch.no_grad():
                                e = rel_err(ops.resample_accumulate(fd, wd, bd, size, activation="lrelu", impl="cuda"),
                                            ref)
                        finally:
                            torch.backends.cuda.matmul.allow_tf32 = False
                        parity.append({**row, "status": "ok", "rel_err": e, "tol": TF32_TOL, "pass": e <= TF32_TOL})
                # labeling variant (linear head): labels vs float64 argmax, confidence / entropy vs float64
                for impl in ("cuda", "torch"):
                    row = {"check": "label variant", "impl": impl, "dtype": dname, "size": size, "K": L}
                    if impl == "cuda" and kernel_reason:
                        parity.append(absent(kernel_reason, **row))
                        continue
                    with torch.no_grad():
                        labels, conf, ent = ops.resample_label(fd, w_lin.to(dtype), b_lin.to(dtype), size, impl=impl)
                    agree = (labels.long() == ref_logits.argmax(1)).double().mean().item()
                    cerr = (conf.double() - ref_p.amax(1)).abs().max().item()
                    eerr = (ent.double() - ref_ent).abs().max().item()
                    need = 0.9999 if dname == "fp32" else 0.99
                    ctol = 1e-4 if dname == "fp32" else 5e-2
                    parity.append({**row, "status": "ok", "label_agreement": agree, "conf_max_abs_err": cerr,
                                   "entropy_max_abs_err": eerr,
                                   "pass": agree >= need and cerr <= ctol and eerr <= 3 * ctol})
                # the plugin kernel's area-down branch: projected maps at every resolution, some above `size`
                row = {"check": "plugin kernel: projected maps incl. r > size", "impl": "cuda", "dtype": dname,
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
            del ref, ref_logits, ref_p, ref_ent

            # timings: FP32 and BF16 (smoke: FP32)
            for dname in (("fp32", "bf16") if not args.smoke or size == sizes[0] else ("fp32",)):
                dtype = DTYPES[dname]
                elt = torch.finfo(dtype).bits // 8
                fd = [f.to(dtype) for f in feats]
                wd, bd = w_head.to(dtype), b_head.to(dtype)
                cost = step_cost(shapes, args.batch, K, size, elt)
                mode = tensor_core_mode(dtype, ops.tf32_passes())
                op = "fused op (K=%d, lrelu)" % K
                for impl in impls + ("cuda graph",):
                    row = {"op": op, "impl": impl, "dtype": dname, "size": size, "batch": args.batch}
                    if impl.startswith("cuda") and kernel_reason:
                        timings.append(absent(kernel_reason, **row))
                        continue
                    if impl == "reference" and (args.no_materialized or size > args.materialized_max_size):
                        timings.append(absent("--no-materialized" if args.no_materialized else
                                              f"materialized stack above --materialized-max-size "
                                              f"{args.materialized_max_size}", **row))
                        continue

                    def call(impl=impl.split()[0]):  # noqa: B008 (binds this iteration's impl)
                        with torch.no_grad():
                            return ops.resample_accumulate(fd, wd, bd, size, activation="lrelu", impl=impl)  # noqa: F821
                    if impl == "cuda graph":
                        try:
                            call = graph_of(call)
                        except Exception as exc:  # noqa: BLE001 - not capturable is a result, not a crash
                            timings.append(absent(f"CUDA graph capture failed: {type(exc).__name__}: "
                                                  f"{str(exc).splitlines()[0][:200]}", **row))
                            continue
                    # torch / reference run cuBLAS FP32 (TF32 off) or BF16 tensor cores
                    timed_row(row, call, cost, mode if impl.startswith("cuda") else
                              ("FP32" if dname == "fp32" else "BF16"))

                def kernel_vs_torch(op: str, run, cost: dict, mode_cuda: str, mode_torch: str) -> None:
                    """One timing row per impl ("cuda", "torch") of run(impl) -> output."""
                    for impl in ("cuda", "torch"):
                        row = {"op": op, "impl": impl, "dtype": dname, "size": size, "batch": args.batch}
                        if impl == "cuda" and kernel_reason:
                            timings.append(absent(kernel_reason, **row))
                            continue

                        def call(impl=impl):
                            with torch.no_grad():
                                return run(impl)
                        timed_row(row, call, cost, mode_cuda if impl == "cuda" else mode_torch)

                torch_mode = "FP32" if dname == "fp32" else "BF16"
                kernel_vs_torch("label variant (K=%d)" % L,
                                lambda impl: ops.resample_label(fd, w_lin.to(dtype), b_lin.to(dtype), size, impl=impl),  # noqa: F821
                                step_cost(shapes, args.batch, L, size, elt, labeling=True), mode, torch_mode)
                # the plugin kernel on projected maps (no projection: bytes only)
                with torch.no_grad():
                    maps = ops.project_by_resolution(fd, wd, size)
                pcost = {"flops": 0, "bytes": sum(m.numel() for m in maps) * elt + args.batch * K * size * size * elt}
                kernel_vs_torch("plugin kernel (projected maps)",
                                lambda impl: ops.resample_projected(maps, bd, size, activation="lrelu", impl=impl),  # noqa: F821
                                pcost, None, None)
                del fd, maps
    except Exception:  # noqa: BLE001 - recorded with its traceback, and the exit code says so
        error = traceback.format_exc()
        print(error, file=sys.stderr, flush=True)

    # speed-ups vs the torch fused op (same op, dtype, size); labeling overhead vs the generator
    base = {(r["op"], r["dtype"], r["size"]): r["median_ms"] for r in timings
            if r.get("status") == "ok" and r["impl"] == "torch" and not r["op"].startswith("generator")}
    gen_ms = next((r["median_ms"] for r in timings if r.get("status") == "ok" and r["op"].startswith("generator")),
                  None)
    for r in timings:
        if r.get("status") == "ok" and (r["op"], r["dtype"], r["size"]) in base:
            r["speedup_vs_torch"] = base[(r["op"], r["dtype"], r["size"])] / r["median_ms"]
        if r.get("status") == "ok" and gen_ms and not r["op"].startswith("generator"):
            r["of_generator"] = r["median_ms"] / gen_ms

    failed = [r for r in parity if r.get("status") == "ok" and not r["pass"]]
    result = {"benchmark": "gpu_kernel_check", "mode": "smoke" if args.smoke else "full", "env": env,
              "device": device_name or "cpu", "peak": peak.__dict__ if peak else None,
              "generator": ginfo, "batch": args.batch, "kernel": {"available": kernel_reason is None,
                                                                  "reason": kernel_reason, "build_or_load_s": build_s},
              "tf32": False if device.type == "cuda" else None, "timing": args.timing,
              "budget_s": args.budget_s, "sizes_skipped_for_budget": skipped, "generator_ms": gen_ms,
              "parity": parity, "timings": timings, "all_parity_pass": not failed and error is None,
              "error": error, "seconds": time.perf_counter() - t_start}
    write_json(out_dir / "gpu_kernel_check.json", result)
    write_text(out_dir / "gpu_kernel_check.md", render_markdown(result))
    plot_timings(result, out_dir / "gpu_kernel_check.png")
    print(f"wrote {out_dir / 'gpu_kernel_check.json'} and .md; parity {'PASS' if not failed else 'FAIL'}"
          f" ({sum(r.get('status') == 'ok' for r in parity)} measured, {len(failed)} failed)"
          + (f"; sizes {skipped} skipped (--budget-s {args.budget_s})" if skipped else ""), flush=True)
    return 1 if failed or error else 0


def plot_timings(res: dict, path: Path) -> None:
    """Fused-op and label-variant times per size and impl (log scale), with the device's bound and
    the generator's own synthesis time as reference lines: how far each path is from the hardware."""
    plt = pyplot()
    ops_ = [o for o in dict.fromkeys(r["op"] for r in res["timings"]) if not o.startswith(("generator", "plugin"))]
    fig, axes = plt.subplots(1, max(len(ops_), 1), figsize=(6 * max(len(ops_), 1), 4), squeeze=False)
    for ax, op in zip(axes[0], ops_):
        rows = [r for r in res["timings"] if r["op"] == op and r.get("status") == "ok"]
        for (impl, dname) in dict.fromkeys((r["impl"], r["dtype"]) for r in rows):
            pts = sorted((r["size"], r["median_ms"]) for r in rows if (r["impl"], r["dtype"]) == (impl, dname))
            ax.plot(*zip(*pts), marker="o", label=f"{impl} {dname}")
        for dname in dict.fromkeys(r["dtype"] for r in rows):
            bound = sorted({(r["size"], r["bound_ms"]) for r in rows if r["dtype"] == dname and r.get("bound_ms")})
            if bound:
                ax.plot(*zip(*bound), linestyle=":", color="black", label=f"bound {dname}")
        if res.get("generator_ms"):
            ax.axhline(res["generator_ms"], color="grey", linestyle="--", label="generator synthesis")
        sizes = sorted({r["size"] for r in rows})
        ax.set(title=op, xlabel="output size", ylabel="ms per call", yscale="log")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes or [1], [f"{s}²" for s in sizes] or [""])
        ax.legend(fontsize=7)
    fig.suptitle(f"{res['device']}: fused feature step ({res['mode']} mode)")
    fig.tight_layout()
    save_figure(fig, path)


def render_markdown(res: dict) -> str:
    k = res["kernel"]
    pk = res.get("peak")
    lines = [f"# CUDA fused feature step: parity, timings and roofline ({res['mode']} mode)\n",
             environment_markdown(res["env"]),
             f"Generator: {res['generator']['resolution']}² ({res['generator']['layers']} feature layers, "
             f"{res['generator']['channels']} channels), batch {res['batch']}. Kernel: "
             + (f"built/loaded in {k['build_or_load_s']:.1f} s." if k["available"] else f"absent ({k['reason']}).")
             + (" torch's TF32 off (FP32 rows: cuBLAS FP32; the kernel 3xTF32)." if res["tf32"] is False else "")
             + "\n",
             ("Roofline peaks (dense, data sheet): " + (f"{pk['name']}: {pk['tf32_tflops']} TF32 / {pk['bf16_tflops']} "
              f"BF16 / {pk['fp32_tflops']} FP32 TFLOP/s, {pk['hbm_tb_s']} TB/s." if pk else
              f"unknown device {res['device']!r}: no PEAKS entry, so no bound and no ratio.") + "\n"),
             (f"**Stopped by an error** (results below are partial):\n\n```\n{res['error']}```\n" if res.get("error")
              else ""),
             (f"Sizes {res['sizes_skipped_for_budget']} not run: over `--budget-s {res['budget_s']}`.\n"
              if res.get("sizes_skipped_for_budget") else ""),
             "## Parity (relative error = max |out - ref| / max |ref|, ref = torch fused op in float64)\n"]
    rows = []
    for r in res["parity"]:
        if r["status"] != "ok":
            rows.append([r["check"], r["impl"], r["dtype"], r["size"], "absent", "", r["reason"]])
        elif "rel_err" in r:
            rows.append([r["check"] + (f" ({r['tensor_cores']})" if r.get("tensor_cores") else ""), r["impl"],
                         r["dtype"], r["size"], f"{r['rel_err']:.2e}", f"{r['tol']:.1e}", "pass" if r["pass"] else "FAIL"])
        else:
            rows.append([r["check"], r["impl"], r["dtype"], r["size"],
                         f"labels {100 * r['label_agreement']:.3f} %",
                         f"conf err {r['conf_max_abs_err']:.1e}, entropy err {r['entropy_max_abs_err']:.1e}",
                         "pass" if r["pass"] else "FAIL"])
    lines.append(markdown_table(["check", "impl", "dtype", "size", "error", "tolerance", "result"], rows,
                                numeric=[False, False, False, True, True, True, False]))
    lines.append(f"\n## Timings (median ms per call; {res.get('timing', 'events')} timing after warm-up)\n\n"
                 "bound = max(FLOPs / tensor-core peak of the row's mode, bytes / HBM bandwidth) on this device; "
                 "x bound = measured / bound; % gen = time / the generator's own synthesis time (goal for "
                 "labeling: <= 15 %).\n")
    rows = []
    for r in res["timings"]:
        if r["status"] != "ok":
            rows.append([r["op"], r["impl"], r["dtype"], r["size"], None, None, None, None, None, None, None,
                         "absent: " + r["reason"]])
        else:
            rows.append([r["op"], r["impl"], r["dtype"], r["size"], r.get("tensor_cores") or "", r["median_ms"],
                         r.get("bound_ms"), r.get("x_bound"), r.get("speedup_vs_torch"),
                         100 * r["of_generator"] if r.get("of_generator") else None, r.get("peak_extra_mib"),
                         r.get("bound_by", "")])
    lines.append(markdown_table(["op", "impl", "dtype", "size", "math", "median ms", "bound ms", "x bound", "x torch",
                                 "% gen", "peak extra MiB", "note"], rows,
                                numeric=[False, False, False, True, False, True, True, True, True, True, True, False],
                                digits=3))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
