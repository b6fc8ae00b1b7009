"""The GPU section of `make bench`: rows that only mean something on a CUDA device.

- feature step: the CUDA kernel (`ganseg.ops`, impl="cuda") vs the fused PyTorch op (impl="torch")
  vs the materialized stack (impl="reference"), time and peak CUDA memory, at 256², 512², 1024²
  outputs from a 1024² config-f-width generator's feature shapes (random values: the step's cost
  does not depend on them), each with its roofline bound on the device and measured / bound
  (gpu_kernel_check.roofline), timed with one synchronize per N calls (short kernels); plus the
  generator's own synthesis time, so the step's share of it (goal <= 15 %) is measured;
- the UNet: torch eager FP32 and BF16 (autocast), a CUDA graph of the FP32 forward, ONNX Runtime's
  CUDA and TensorRT execution providers where onnxruntime-gpu is importable and actually uses them
  (`session.get_providers()`, not the advertised list: onnxruntime-gpu silently falls back to CPU);
  batch 1/8/32 at 256² and 512².

Without a GPU every row is kept and marked absent with the reason, so the table shows what a GPU
run adds. `device="cpu"` runs the eager/fused/reference rows on the CPU (the test suite's smoke
mode: it proves the code paths before GPU minutes are spent on them).

    python benchmarks/gpu.py   # -> results/gpu.{json,md}
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, absent, device_sync, environment, environment_markdown, markdown_table, measure,  # noqa: E402
                    write_json, write_text)

OPS_SIZES = (256, 512, 1024)
OPS_IMPLS = ("cuda", "torch", "reference")
UNET_SIZES = (256, 512)
UNET_BATCHES = (1, 8, 32)
UNET_ENGINES = ("torch eager fp32", "torch eager bf16", "cuda graph fp32", "onnxruntime CUDA", "onnxruntime TensorRT")


def planned(ops_sizes=OPS_SIZES, unet_sizes=UNET_SIZES, unet_batches=UNET_BATCHES, engines=UNET_ENGINES) -> list[dict]:
    return ([{"bench": "feature step", "impl": i, "size": s} for s in ops_sizes for i in OPS_IMPLS]
            + [{"bench": "unet", "engine": e, "size": s, "batch": b} for s in unet_sizes for b in unet_batches
               for e in engines])


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not importable"
    if not torch.cuda.is_available():
        return "no CUDA device on this machine (torch.cuda.is_available() is False)"
    return None


# --------------------------------------------------------------------------------------------
# feature step

def _features(res: int = 1024, device: str = "cuda"):
    import torch

    from ganseg import Generator, GeneratorConfig

    G = Generator(GeneratorConfig(resolution=res, z_dim=512, w_dim=512, mapping_layers=2))
    torch.manual_seed(0)
    return [torch.randn(1, c, r, r, device=device) for _, r, c in G.feature_info]


def ops_rows(sizes=OPS_SIZES, impls=OPS_IMPLS, device: str = "cuda", gen_res: int = 1024, warmup: int = 2,
             repeats: int = 5, log=print) -> list[dict]:
    import torch

    from ganseg import Generator, GeneratorConfig
    from ganseg.ops import resample_accumulate, tf32_passes
    from gpu_kernel_check import Timer, peak_for, roofline, step_cost, tensor_core_mode

    feats = _features(gen_res, device)
    channels = sum(f.shape[1] for f in feats)
    torch.manual_seed(1)
    weight = torch.randn(10, channels, device=device) / channels ** 0.5
    bias = torch.zeros(10, device=device)
    cuda = device.startswith("cuda")
    timer = Timer(torch.device(device), warmup, repeats, "one-sync")
    peak = peak_for(torch.cuda.get_device_name(device) if cuda else None)
    rows = []
    # the generator's own synthesis (batch 1, fp32) at its resolution: what the step is an overhead on
    G = Generator(GeneratorConfig(resolution=gen_res, z_dim=512, w_dim=512, mapping_layers=2)).to(device).eval()
    z = torch.randn(1, 512, device=device)
    with torch.no_grad():
        gen_ms = timer(lambda: G.synthesize_features(z=z))["median_ms"]  # noqa: F821 (G is deleted only after)
    del G
    rows.append({"bench": "generator synthesis", "impl": "torch", "size": gen_res, "device": device, "status": "ok",
                 "median_ms": gen_ms})
    log(f"  gpu generator synthesis {gen_res}²: {gen_ms:8.2f} ms")
    for size in sizes:
        for impl in impls:
            keys = {"bench": "feature step", "impl": impl, "size": size, "device": device, "channels": channels}
            if impl == "cuda" and not cuda:
                rows.append(absent("impl='cuda' needs CUDA tensors", **keys))
                continue
            if impl == "reference":
                need = channels * size * size * 4 * 2.0
                free = torch.cuda.mem_get_info()[0] if cuda else None
                if free is not None and need > 0.9 * free:
                    rows.append(absent(f"the materialized stack needs about {need / 2**30:.1f} GB; "
                                       f"{free / 2**30:.1f} GB free on the device", **keys))
                    continue

            def fn(impl=impl, size=size):
                with torch.no_grad():
                    resample_accumulate(feats, weight, bias, size, impl=impl)
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                t = timer(fn)
            except Exception as exc:  # noqa: BLE001 — kernel build failure, OOM: recorded as the reason
                rows.append(absent(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", **keys))
                if cuda:
                    torch.cuda.empty_cache()
                continue
            mem = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
            mode = tensor_core_mode(torch.float32, tf32_passes()) if impl == "cuda" else "FP32"
            rl = roofline(step_cost([(f.shape[1], f.shape[-1], 1) for f in feats], 1, 10, size, 4), peak, mode)
            ratio = t["median_ms"] / rl["bound_ms"] if rl["bound_ms"] else None
            rows.append({**keys, "status": "ok", "median_ms": t["median_ms"], "peak_mb": mem, "repeats": t["repeats"],
                         "tensor_cores": mode, **rl, "x_bound": ratio, "of_generator": t["median_ms"] / gen_ms})
            log(f"  gpu feature step {impl:9s} {size:4d}²: {t['median_ms']:8.2f} ms"
                + (f" (x{ratio:.2f} of the bound)" if ratio else "")
                + f", {100 * t['median_ms'] / gen_ms:.0f} % of the generator"
                + (f", peak {mem:.0f} MB" if mem is not None else ""))
    return rows


# --------------------------------------------------------------------------------------------
# UNet

def _ort_session(onnx_path: Path, provider: str):
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no {provider} (install onnxruntime-gpu)"
    from ganseg.pipeline import ort_session

    sess = ort_session(onnx_path, threads=os.cpu_count() or 1, providers=[provider, "CPUExecutionProvider"])
    if sess.get_providers()[0] != provider:  # silently fell back to CPU
        return None, f"{provider} is listed but the session fell back to {sess.get_providers()[0]}"
    return sess, ""


def unet_rows(unet, onnx_path: Path | None, sizes=UNET_SIZES, batches=UNET_BATCHES, engines=UNET_ENGINES,
              device: str = "cuda", warmup: int = 3, repeats: int = 10, log=print) -> list[dict]:
    import torch

    cuda = device.startswith("cuda")
    unet = unet.to(device).eval()
    if cuda:
        unet = unet.to(memory_format=torch.channels_last)
    sync = device_sync(device)
    sessions: dict[str, tuple] = {}
    rows = []
    for size in sizes:
        for batch in batches:
            x = (torch.rand(batch, 3, size, size, device=device) * 2 - 1)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            for engine in engines:
                keys = {"bench": "unet", "engine": engine, "size": size, "batch": batch, "device": device}
                try:
                    fn, why = _unet_fn(engine, unet, x, onnx_path, cuda, sessions)
                    if fn is None:
                        rows.append(absent(why, **keys))
                        continue
                    t = measure(fn, warmup=warmup, repeats=repeats, items=batch, sync=sync)
                except Exception as exc:  # noqa: BLE001 — e.g. OOM at a large batch: recorded
                    rows.append(absent(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", **keys))
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                rows.append({**keys, "status": "ok", "median_ms": 1e3 * t.median, "img_s": t.items_per_s,
                             "repeats": len(t.samples)})
                log(f"  gpu unet {engine:22s} {size}² batch {batch:2d}: {1e3 * t.median:8.2f} ms "
                    f"{t.items_per_s:9.1f} img/s")
    return rows


def _unet_fn(engine: str, unet, x, onnx_path: Path | None, cuda: bool, sessions: dict):
    import torch

    if engine == "torch eager fp32":
        def fn():
            with torch.inference_mode():
                unet(x)
        return fn, ""
    if engine == "torch eager bf16":
        def fn():
            with torch.inference_mode(), torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                unet(x)
        return fn, ""
    if engine == "cuda graph fp32":
        if not cuda:
            return None, "CUDA graphs need a CUDA device"
        static = x.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.inference_mode():
            for _ in range(3):  # warm up on a side stream before capture (cuDNN picks its algorithms)
                unet(static)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.inference_mode():
            unet(static)
        return g.replay, ""
    if engine.startswith("onnxruntime"):
        if onnx_path is None:
            return None, "no ONNX file (ganseg.export.onnx_export unavailable)"
        if not cuda:
            return None, "ONNX Runtime GPU providers need a CUDA device"
        provider = "CUDAExecutionProvider" if engine.endswith("CUDA") else "TensorrtExecutionProvider"
        if provider not in sessions:
            try:
                sessions[provider] = _ort_session(onnx_path, provider)
            except Exception as exc:  # noqa: BLE001
                sessions[provider] = (None, f"{provider} failed to start: {str(exc).splitlines()[0][:200]}")
        sess, why = sessions[provider]
        if sess is None:
            return None, why
        xn = x.float().contiguous().cpu().numpy()
        return (lambda: sess.run(None, {"image": xn})), ""
    raise ValueError(f"unknown engine {engine!r}")


def gpu_rows(unet=None, onnx_path: Path | None = None, device: str | None = None, quick: bool = False,
             log=print) -> list[dict]:
    """Every planned GPU row: measured on a CUDA device, absent with the reason elsewhere.
    `device="cpu"`: the smoke mode (eager/torch/reference paths on the CPU, tiny sizes)."""
    if device is None:
        why = no_gpu_reason()
        if why:
            return [absent(why, **k) for k in planned()]
        device = "cuda"
    if unet is None:
        from inprocess import bench_unet

        unet, _ = bench_unet()
    if quick:
        return (ops_rows(sizes=(32,), gen_res=32, device=device, warmup=1, repeats=2, log=log)
                + unet_rows(unet, onnx_path, sizes=(32,), batches=(1, 2), device=device, warmup=1, repeats=2, log=log))
    return ops_rows(device=device, log=log) + unet_rows(unet, onnx_path, device=device, log=log)


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    text = ""
    gen = [r for r in ok if r["bench"] == "generator synthesis"]
    if gen:
        text += f"Generator synthesis ({gen[0]['size']}², batch 1, fp32): {gen[0]['median_ms']:.2f} ms.\n\n"
    ops = [r for r in ok if r["bench"] == "feature step"]
    if ops:
        text += markdown_table(["feature step impl", "output", "math", "median ms", "bound ms", "x bound",
                                "% of generator", "peak MB"],
                               [[r["impl"], f"{r['size']}²", r.get("tensor_cores"), r["median_ms"], r.get("bound_ms"),
                                 r.get("x_bound"), 100 * r["of_generator"] if r.get("of_generator") else None,
                                 r.get("peak_mb")] for r in ops],
                               numeric=[False, False, False, True, True, True, True, True], digits=2)
    un = [r for r in ok if r["bench"] == "unet"]
    if un:
        text += "\n" + markdown_table(["UNet engine", "size", "batch", "median ms", "img/s"],
                                      [[r["engine"], f"{r['size']}²", r["batch"], r["median_ms"], r["img_s"]]
                                       for r in un], numeric=[False, False, True, True, True], digits=2)
    miss = [r for r in rows if r.get("status") != "ok"]
    if miss:
        reasons = sorted({r["reason"] for r in miss})
        text += (f"\n{len(miss)} of {len(rows)} GPU rows absent: " + "; ".join(reasons) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unet", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    from inprocess import bench_unet, export_for_bench

    unet, about = bench_unet(args.unet)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_for_bench(unet, Path(tmp)) if no_gpu_reason() is None else None
        rows = gpu_rows(unet, onnx_path)
    env = environment()
    out = Path(args.out)
    write_json(out / "gpu.json", {"environment": env, "unet": about, "rows": rows})
    write_text(out / "gpu.md", environment_markdown(env) + "\n" + table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
