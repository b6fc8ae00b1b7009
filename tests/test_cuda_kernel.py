"""The CUDA kernels (the plugin's resample-accumulate and the fused feature step), checked on a
machine without a GPU (and on one with).

Why these checks can be trusted without a GPU:
1. nvcc (13, on the CPU machines) compiles both kernel sources for sm_80 and sm_90 on every run,
   with the flags the TensorRT plugin's CMake build uses (-std=c++17, -fPIC) and the half/bf16
   restrictions torch's extension builder adds (-D__CUDA_NO_HALF_CONVERSIONS__ & co.), and ptxas
   must report every kernel instantiation for both archs, without register spills in the fused ones.
2. The same nvcc call links a host program (tests/csrc/) that runs the kernels' own code on the
   CPU: the plugin kernel's __host__ __device__ per-pixel code, and the fused kernels' whole block
   bodies (tile loads with the folded area-down reduction, warp sub-tiles, TF32 / 3xTF32 rounding,
   epilogue, online softmax) with a serial executor in place of the WMMA fragments, on the plan of
   the launcher's own make_plan; its results must match ganseg.ops.
3. A NumPy emulation of the index formulas (same expressions as the .cuh) must reproduce
   ganseg.ops.resize, so a formula error shows up even where nvcc is missing.
4. The dispatch: CPU tensors take the torch path without building anything, GANSEG_OPS_IMPL is
   honoured, impl="cuda" on CPU tensors is a clear error.
The GPU tests at the end run only where torch sees a CUDA device (issue 13's GPU run also executes
benchmarks/gpu_kernel_check.py, whose CPU smoke mode is tested here).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ganseg import ops, ops_cuda
from ganseg.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "ganseg" / "csrc"
HOST_CHECK = [ROOT / "tests" / "csrc" / n for n in ("resample_host_check.cu", "fused_host_check.cu")]
KERNEL_SOURCES = [CSRC / n for n in ("resample_accumulate.cu", "fused_features.cu")]
ARCHS = ("sm_80", "sm_90")
TYPES = ("float", "__half", "__nv_bfloat16")
FUSED_KERNELS = ([f"project_groups_kernel<{t}>" for t in TYPES]
                 + [f"fused_main_kernel<{t}, {b}>" for t in TYPES for b in ("false", "true")])
KERNELS = [f"resample_accumulate_kernel<{t}>" for t in TYPES] + FUSED_KERNELS
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ACT_CODES = {"none": 0, "relu": 1, "lrelu": 2}


# --------------------------------------------------------------------------------------------
# 1 + 2: nvcc build (one call, both archs) and the host emulation it produces

@pytest.fixture(scope="module")
def nvcc_build(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH: the kernel compile test needs the CUDA toolkit's nvcc (13 on the project's machines)")
    out = tmp_path_factory.mktemp("nvcc") / "resample_host_check"
    # torch.utils.cpp_extension adds these to every nvcc call (no implicit half/bf16 conversions):
    # compiling under them too covers the torch extension's build as well as the plugin's
    torch_flags = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                   "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    cmd = [nvcc, "-std=c++17", "-O2", "--threads", "2", "-Xcompiler", "-fPIC,-Wall", "-Xptxas", "-v", *torch_flags,
           *[f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS],
           f"-I{CSRC}", *map(str, KERNEL_SOURCES), *map(str, HOST_CHECK), "-o", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return {"cmd": cmd, "rc": r.returncode, "log": r.stdout + r.stderr, "exe": out, "seconds": time.perf_counter() - t0}


def _demangle(log: str) -> str:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return log
    return subprocess.run([cxxfilt], input=log, capture_output=True, text=True).stdout


def test_nvcc_compiles_every_kernel_for_sm80_and_sm90(nvcc_build):
    assert nvcc_build["rc"] == 0, f"nvcc failed:\n{' '.join(nvcc_build['cmd'])}\n{nvcc_build['log'][-4000:]}"
    log = _demangle(nvcc_build["log"])
    compiled = re.findall(r"Compiling entry function '(.+?)' for '(sm_\d+)'", log)
    for arch in ARCHS:
        names = [n for n, a in compiled if a == arch]
        for k in KERNELS:
            assert any(k in n for n in names), f"{k} not compiled for {arch}; ptxas compiled {names}"
    assert len(compiled) == len(KERNELS) * len(ARCHS)
    # no compiler warnings from our own sources (torch-free, plain CUDA C++)
    ours = [ln for ln in log.splitlines() if "warning" in ln.lower() and ("csrc" in ln)]
    assert not ours, "\n".join(ours)
    # the tensor-core kernels keep their WMMA fragments and tiles in registers: a spill would put
    # local-memory traffic into the inner loop (ptxas prints the spills after each entry function)
    spills = re.findall(r"Compiling entry function '(.+?)' for '(sm_\d+)'\s*\n.*Function properties.*\n"
                        r"\s*(\d+) bytes stack frame, (\d+) bytes spill stores", log)
    fused = [(n, a, int(st)) for n, a, _, st in spills if any(k in n for k in FUSED_KERNELS)]
    assert len(fused) == len(FUSED_KERNELS) * len(ARCHS) and all(st == 0 for *_, st in fused), fused


def test_launchers_are_linkable_symbols(nvcc_build):
    """The torch binding and the TensorRT plugin link to these two host functions."""
    assert nvcc_build["rc"] == 0
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not on PATH")
    syms = subprocess.run([nm, "-C", str(nvcc_build["exe"])], capture_output=True, text=True).stdout
    for name in ("ganseg::launch_resample_accumulate(", "ganseg::check_args(", "ganseg::launch_fused_accumulate(",
                 "ganseg::launch_fused_label(", "ganseg::check_feature_args(", "ganseg::make_plan("):
        assert name in syms, f"{name} missing from the compiled object"


def run_host_check(exe: Path, tmp: Path, maps: list[torch.Tensor], bias: torch.Tensor | None, size: int,
                   align_corners: bool, activation: str, dtype: torch.dtype):
    n, k = maps[0].shape[:2]
    header = [DTYPE_CODES[dtype], ACT_CODES[activation], int(align_corners), n, k, size, int(bias is not None),
              len(maps), *[m.shape[-1] for m in maps]]
    blob = np.asarray(header, np.int32).tobytes()
    blob += b"".join(m.float().contiguous().numpy().tobytes() for m in maps)
    if bias is not None:
        blob += bias.float().numpy().tobytes()
    raw = _run_exe(exe, "projected", tmp, blob)
    n_out = n * k * size * size
    out = np.frombuffer(raw, np.float32, n_out).reshape(n, k, size, size)
    probes = np.frombuffer(raw, np.int32, 5, offset=4 * n_out)
    return torch.from_numpy(out.copy()), probes


def _run_exe(exe: Path, mode: str, tmp: Path, blob: bytes) -> bytes:
    (tmp / "in.bin").write_bytes(blob)
    r = subprocess.run([str(exe), mode, str(tmp / "in.bin"), str(tmp / "out.bin")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"host check ({mode}) exited {r.returncode}: {r.stderr}"
    return (tmp / "out.bin").read_bytes()


# (dtype, activation, align_corners, K, size, resolutions): up (bilinear), identity, down (area,
# integral and not), K not a multiple of the kernel's 8-channel chunk, odd scales
CASES = [
    (torch.float32, "none", False, 13, 16, (4, 8, 16, 32, 64)),
    (torch.float32, "lrelu", True, 5, 16, (4, 8, 16, 32)),
    (torch.float32, "relu", False, 8, 12, (5, 7, 12, 20, 36)),
    (torch.float16, "relu", False, 10, 16, (4, 8, 16, 32)),
    (torch.bfloat16, "none", True, 9, 12, (3, 6, 24)),
]
# relative to max |reference|: fp32 accumulation; then the stored output's rounding
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("dtype,activation,align_corners,k,size,res", CASES,
                         ids=[f"{str(c[0])[6:]}-{c[1]}-ac{int(c[2])}-K{c[3]}-S{c[4]}" for c in CASES])
def test_host_emulation_matches_ops(nvcc_build, tmp_path, dtype, activation, align_corners, k, size, res):
    assert nvcc_build["rc"] == 0
    g = torch.Generator().manual_seed(k * 100 + size)
    # inputs rounded to the kernel's dtype first; the reference is then exact maths on those values
    maps = [torch.randn(2, k, r, r, generator=g).to(dtype).double() for r in res]
    bias = torch.randn(k, generator=g).to(dtype).double()
    ref = ops.resample_projected(maps, bias, size, align_corners, activation, impl="torch")
    out, probes = run_host_check(nvcc_build["exe"], tmp_path, maps, bias, size, align_corners, activation, dtype)
    scale = ref.abs().max().item()
    err = (out.double() - ref).abs().max().item() / scale
    assert err <= TOL[dtype], f"max relative error {err:.2e} > {TOL[dtype]:.0e}"
    assert probes.tolist() == [1] * 5, f"check_args accepted an invalid launch: {probes.tolist()}"


# The fused feature kernels' block bodies on the CPU (tests/csrc/fused_host_check.cu)

def run_fused_host_check(exe: Path, tmp: Path, feats: list[torch.Tensor], weight: torch.Tensor,
                         bias: torch.Tensor | None, size: int, align_corners: bool, activation: str,
                         dtype: torch.dtype, tf32_passes: int):
    n, k = feats[0].shape[0], weight.shape[0]
    header = [DTYPE_CODES[dtype], ACT_CODES[activation], int(align_corners), n, k, size, int(bias is not None),
              len(feats), tf32_passes, *[v for f in feats for v in (f.shape[1], f.shape[-1])]]
    blob = np.asarray(header, np.int32).tobytes() + b"".join(f.float().contiguous().numpy().tobytes() for f in feats)
    blob += weight.float().contiguous().numpy().tobytes()
    if bias is not None:
        blob += bias.float().numpy().tobytes()
    raw = _run_exe(exe, "fused", tmp, blob)
    n_out, n_pix = n * k * size * size, n * size * size
    out = np.frombuffer(raw, np.float32, n_out).reshape(n, k, size, size)
    at = 4 * n_out
    labels = np.frombuffer(raw, np.uint8, n_pix, offset=at).reshape(n, size, size)
    conf = np.frombuffer(raw, np.float32, n_pix, offset=at + n_pix).reshape(n, size, size)
    ent = np.frombuffer(raw, np.float32, n_pix, offset=at + 5 * n_pix).reshape(n, size, size)
    tail = np.frombuffer(raw, np.int32, offset=at + 9 * n_pix).tolist()
    num_groups = tail[1]
    plan = {"num_main": tail[0], "group_res": tail[2:2 + num_groups], "blocks": tail[2 + num_groups],
            "ws_floats": tail[3 + num_groups]}
    probes = tail[4 + num_groups:]
    return [torch.from_numpy(a.copy()) for a in (out, labels, conf, ent)], plan, probes


# (dtype, tf32 passes, activation, align_corners, K, size, layers (r, C)): layers below the size (two
# sharing 8², one group), at it, above it (area folded into the load: integral 32->16 / 64->16 and
# non-integral 20->12, 36->12), output tiles crossing rows and a partial last tile (12² = 144 px),
# channel counts not a multiple of the 32-channel chunk, K > 128 (two K tiles) and K < 32 (warps
# past K skip their MMAs)
FUSED_CASES = [
    (torch.float32, 3, "lrelu", False, 13, 16, ((4, 40), (8, 20), (8, 12), (16, 36), (32, 10), (64, 5))),
    (torch.float32, 1, "none", True, 13, 16, ((4, 40), (8, 20), (16, 36), (32, 10))),
    (torch.float32, 3, "relu", False, 130, 12, ((5, 16), (7, 8), (12, 20), (20, 6), (36, 3))),
    (torch.float16, 3, "none", False, 9, 12, ((5, 16), (7, 8), (12, 20), (20, 6))),
    (torch.bfloat16, 3, "lrelu", True, 40, 16, ((4, 33), (8, 9), (16, 7), (32, 5))),
]
# relative to max |reference| (exact maths on the dtype-rounded inputs): 3xTF32 is FP32-accurate;
# plain TF32 rounds both operands to 10 mantissa bits; FP16/BF16 also round the area-pooled operand
# and the stored output, as torch's own FP16/BF16 op does
FUSED_TOL = {(torch.float32, 3): 1e-5, (torch.float32, 1): 2e-3, (torch.float16, 3): 2e-3,
             (torch.bfloat16, 3): 1.6e-2}


@pytest.mark.parametrize("dtype,passes,activation,align_corners,k,size,layers", FUSED_CASES,
                         ids=[f"{str(c[0])[6:]}x{c[1]}-{c[2]}-ac{int(c[3])}-K{c[4]}-S{c[5]}" for c in FUSED_CASES])
def test_fused_host_emulation_matches_ops(nvcc_build, tmp_path, dtype, passes, activation, align_corners, k, size,
                                          layers):
    assert nvcc_build["rc"] == 0
    g = torch.Generator().manual_seed(k * 100 + size)
    feats = [torch.randn(2, c, r, r, generator=g).to(dtype).double() for r, c in layers]
    total = sum(c for _, c in layers)
    weight = (torch.randn(k, total, generator=g) / total**0.5).to(dtype).double()
    bias = torch.randn(k, generator=g).to(dtype).double()
    ref = ops.resample_accumulate(feats, weight, bias, size, align_corners, activation, impl="torch")
    (out, labels, conf, ent), plan, probes = run_fused_host_check(
        nvcc_build["exe"], tmp_path, feats, weight, bias, size, align_corners, activation, dtype, passes)
    scale = ref.abs().max().item()
    err = (out.double() - ref).abs().max().item() / scale
    assert err <= FUSED_TOL[(dtype, passes)], f"max relative error {err:.2e} > {FUSED_TOL[(dtype, passes)]:.0e}"
    # labeling variant: argmax / max softmax probability / entropy of the pre-activation logits
    logits = ops.resample_accumulate(feats, weight, bias, size, align_corners, "none", impl="torch")
    ref_labels, ref_conf, ref_ent = ops.resample_label(feats, weight, bias, size, align_corners, impl="torch")
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * FUSED_TOL[(dtype, passes)] * scale  # no near-tie rounding could flip
    assert clear.float().mean() > 0.5
    assert torch.equal(labels[clear], ref_labels[clear])
    atol = 10 * FUSED_TOL[(dtype, passes)]
    torch.testing.assert_close(conf.double(), ref_conf.double(), atol=atol, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent.double(), atol=atol * np.log(k), rtol=0)
    # the launcher's plan: layers at/above the size in the main kernel, one up group per resolution
    # below it (largest reduction first), one projection block per 64 pixels per image
    below = {}
    for r, c in layers:
        if r < size:
            below[r] = below.get(r, 0) + c
    assert plan["num_main"] == sum(r >= size for r, _ in layers)
    assert sorted(plan["group_res"]) == sorted(below) and [below[r] for r in plan["group_res"]] == sorted(
        below.values(), reverse=True)
    assert plan["blocks"] == sum(2 * -(-r * r // 64) for r in below)
    assert plan["ws_floats"] == sum(2 * k * r * r for r in below)
    assert probes == [1] * 6, f"check_feature_args accepted an invalid launch: {probes}"


def test_nvcc_compile_time_is_recorded(nvcc_build):
    """The compile runs in every `make test` on 2 CI cores: keep it visible (and bounded)."""
    assert nvcc_build["rc"] == 0
    assert nvcc_build["seconds"] < 300, f"nvcc took {nvcc_build['seconds']:.0f} s for both kernels and archs"


# --------------------------------------------------------------------------------------------
# 3: NumPy emulation of the .cuh index formulas (float32 arithmetic, as on the device)

def linear_tap(dst: int, n_in: int, n_out: int, align_corners: bool):
    f32 = np.float32
    if align_corners:
        scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
        src = scale * f32(dst)
    else:
        scale = f32(n_in) / f32(n_out)
        src = max(scale * (f32(dst) + f32(0.5)) - f32(0.5), f32(0))
    i0 = min(int(src), n_in - 1)
    i1 = i0 + (1 if i0 < n_in - 1 else 0)
    w1 = f32(src - f32(i0))
    return i0, i1, f32(1) - w1, w1


def area_window(dst: int, n_in: int, n_out: int):
    return (dst * n_in) // n_out, ((dst + 1) * n_in + n_out - 1) // n_out


def resize_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
        if n_in == n_out:
            m[d, d] = 1
        elif n_in < n_out:
            i0, i1, w0, w1 = linear_tap(d, n_in, n_out, align_corners)
            m[d, i0] += w0
            m[d, i1] += w1
        else:
            s, e = area_window(d, n_in, n_out)
            m[d, s:e] = 1 / (e - s)
    return m


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("n_in,n_out", [(4, 16), (8, 16), (5, 12), (7, 64), (1, 8), (16, 16), (32, 16), (64, 16),
                                        (36, 12), (20, 12), (24, 7), (1024, 256)])
def test_numpy_index_math_matches_resize(n_in, n_out, align_corners):
    x = torch.randn(1, 2, n_in, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(n_in))
    m = resize_matrix(n_in, n_out, align_corners)
    emulated = m @ x.numpy() @ m.T  # rows, then columns (resize is separable)
    ref = ops.resize(x, n_out, align_corners).numpy()
    np.testing.assert_allclose(emulated, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


# --------------------------------------------------------------------------------------------
# 4: dispatch on CPU

def _feats(dtype=torch.float64, n=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, c, r, r, generator=g, dtype=dtype) for r, c in ((4, 6), (8, 5), (8, 7), (16, 3), (32, 4))]


def test_cpu_auto_takes_torch_path_without_building(monkeypatch):
    def must_not_build(*a, **k):
        raise AssertionError("the CUDA extension must not be built for CPU tensors")

    monkeypatch.delenv(ops.ENV_IMPL, raising=False)
    monkeypatch.setattr(ops_cuda, "load", must_not_build)
    monkeypatch.setattr(ops_cuda, "try_load", must_not_build)
    feats = _feats()
    w, b = torch.randn(12, 25, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    assert ops.resolve_impl("auto", [*feats, w, b]) == "torch"
    out = ops.resample_accumulate(feats, w, b, 16)
    torch.testing.assert_close(out, ops.resample_accumulate_reference(feats, w, b, 16), rtol=1e-10, atol=1e-10)


def test_env_var_forces_reference(monkeypatch):
    calls = []
    original = ops.materialize
    monkeypatch.setattr(ops, "materialize", lambda *a, **k: calls.append(1) or original(*a, **k))
    feats = _feats()
    w = torch.randn(3, 25, dtype=torch.float64)
    monkeypatch.delenv(ops.ENV_IMPL, raising=False)
    ops.resample_accumulate(feats, w, None, 16)
    assert calls == []  # the fused path builds no stack
    monkeypatch.setenv(ops.ENV_IMPL, "reference")
    assert ops.resolve_impl("auto", feats) == "reference"
    ops.resample_accumulate(feats, w, None, 16)
    assert calls == [1]
    ops.resample_accumulate(feats, w, None, 16, impl="torch")  # an explicit impl wins over the variable
    assert calls == [1]
    monkeypatch.setenv(ops.ENV_IMPL, "fastest")
    with pytest.raises(BadInput, match=ops.ENV_IMPL):
        ops.resample_accumulate(feats, w, None, 16)


def test_cuda_impl_on_cpu_tensors_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ops_cuda, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    feats = _feats()
    with pytest.raises(BadInput, match=r"impl='cuda' needs every tensor on a CUDA device, got cpu.*impl='auto'"):
        ops.resample_accumulate(feats, torch.randn(3, 25, dtype=torch.float64), None, 16, impl="cuda")
    with pytest.raises(BadInput, match="impl must be one of"):
        ops.resample_accumulate(feats, torch.randn(3, 25, dtype=torch.float64), None, 16, impl="triton")
    with pytest.raises(BadInput, match="activation must be one of"):
        ops.resample_accumulate(feats, torch.randn(3, 25, dtype=torch.float64), None, 16, activation="gelu")


def test_unavailable_reason_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert "no CUDA device" in ops_cuda.unavailable_reason()
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ops_cuda.load()
    assert len(ops_cuda.source_digest()) == 12


@pytest.mark.parametrize("activation", ["none", "relu", "lrelu"])
def test_activation_and_projected_form(activation):
    feats = _feats()
    w, b = torch.randn(9, 25, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    for size in (8, 16, 64):  # 8: 16² and 32² maps are area-pooled before projecting
        fused = ops.resample_accumulate(feats, w, b, size, activation=activation)
        ref = ops.resample_accumulate_reference(feats, w, b, size, activation=activation)
        torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
        maps = ops.project_by_resolution(feats, w, size)  # what the kernel reads
        assert [m.shape[-1] for m in maps] == sorted({min(f.shape[-1], size) for f in feats})
        assert all(m.is_contiguous() for m in maps)
        torch.testing.assert_close(ops.resample_projected(maps, b, size, activation=activation), ref,
                                   rtol=1e-10, atol=1e-10)
    if activation == "lrelu":
        torch.testing.assert_close(fused, torch.nn.functional.leaky_relu(
            ops.resample_accumulate_reference(feats, w, b, 64), 0.2))


def test_label_variant_torch_path():
    feats = _feats()
    w, b = torch.randn(7, 25, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    labels, conf, ent = ops.resample_label(feats, w, b, 16)
    logits = ops.resample_accumulate_reference(feats, w, b, 16)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 16, 16)
    assert conf.dtype == torch.float32 and ent.dtype == torch.float32 and ent.shape == (2, 16, 16)
    assert torch.equal(labels.long(), logits.argmax(1))
    p = logits.softmax(1)
    torch.testing.assert_close(conf, p.amax(1).float())
    torch.testing.assert_close(ent, -(p * p.log()).sum(1).float())
    with pytest.raises(BadInput, match="at most 256 classes"):
        ops.resample_label(feats, torch.randn(300, 25, dtype=torch.float64), None, 16)


def test_tf32_passes_follow_torch_allow_tf32():
    """FP32 inputs: 3xTF32 (FP32-accurate) unless the user opted into TF32 matmuls in torch."""
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert ops.tf32_passes() == 3
        torch.backends.cuda.matmul.allow_tf32 = True
        assert ops.tf32_passes() == 1
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_cuda_args_are_the_kernels_layout():
    feats = [f.transpose(2, 3) for f in _feats(torch.float32)]  # non-contiguous views
    w = torch.randn(4, 25, 1, 1, dtype=torch.float64)  # a 1x1 conv weight, another dtype
    f, w2, b = ops._cuda_args(feats, w, torch.zeros(4, dtype=torch.float64))
    assert all(x.is_contiguous() for x in f) and w2.shape == (4, 25) and w2.dtype == b.dtype == torch.float32
    with pytest.raises(ValueError, match="input channels"):
        ops._cuda_args(feats, torch.randn(4, 24), None)


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(k) or original(*a, **k))
    return calls


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
def test_heads_pass_their_first_activation_into_the_op(monkeypatch, kind):
    """The body's leading LeakyReLU(0.2) runs in the fused op (the kernel's epilogue on CUDA): same
    logits as projection -> LeakyReLU -> rest of the body, same state-dict keys as before."""
    from ganseg import heads

    head = heads.SegmentationHead(heads.HeadConfig(kind=kind, num_classes=5, feature_channels=[6, 5, 7, 3, 4],
                                                   feature_layers=[0, 1, 2, 3, 4], size=16)).double().eval()
    calls = _spy(monkeypatch, heads, "resample_accumulate")
    feats = _feats()
    with torch.no_grad():
        out = head(feats)
        x = head.project(feats)
        ref = head.body(x)  # the unfused composition: body[0] is the LeakyReLU
    assert [c["activation"] for c in calls] == ["none" if kind == "linear" else "lrelu", "none"]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert kind == "linear" or any(k.startswith("body.1.") for k in head.state_dict())


def test_linear_head_labels_by_the_labeling_variant(monkeypatch):
    from ganseg import heads

    cfg = heads.HeadConfig(kind="linear", num_classes=6, feature_channels=[6, 5, 7, 3, 4],
                           feature_layers=[0, 1, 2, 3, 4], size=16)
    head = heads.SegmentationHead(cfg).double().eval()
    calls = _spy(monkeypatch, heads, "resample_label")
    feats = _feats()
    with torch.no_grad():
        labels, conf, ent = head.label(feats)
        logp = head(feats).log_softmax(1)
    assert len(calls) == 1
    assert torch.equal(labels.long(), logp.argmax(1))
    torch.testing.assert_close(ent.double(), -(logp.exp() * logp).sum(1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="linear head"):
        heads.SegmentationHead(heads.HeadConfig(kind="cnn", num_classes=6, feature_channels=cfg.feature_channels,
                                                feature_layers=cfg.feature_layers, size=16)).label(feats)


def test_synthesize_labels_linear_heads_without_a_class_map(monkeypatch):
    """`ganseg synthesize`: a linear head (no top-k targets) is labelled by the op's labeling variant
    (on CUDA the fused kernel: no logits in memory), with the labels and uncertainty of the probs path."""
    from ganseg import heads, synthesize
    from ganseg.stylegan2 import Generator, GeneratorConfig

    G = Generator(GeneratorConfig(resolution=16, channels=[16, 16, 8], z_dim=16, w_dim=16, mapping_layers=1)).eval()
    head = heads.head_for(G, "linear", 4).eval()
    cfg = synthesize.SynthConfig(n=2, batch=2)
    calls = _spy(monkeypatch, heads, "resample_label")
    fused = synthesize.label_batch(G, head, [0, 1], cfg)
    assert len(calls) == 1
    probs_path = synthesize.label_batch(G, head, [0, 1], synthesize.SynthConfig(n=2, batch=2, soft_topk=2))
    assert len(calls) == 1  # top-k targets need the class probabilities: the logits path
    np.testing.assert_array_equal(fused["labels"], probs_path["labels"])
    np.testing.assert_allclose(fused["uncertainty"], probs_path["uncertainty"], rtol=1e-5)


def test_synthesize_defaults_to_cuda_when_visible(monkeypatch):
    """On a CUDA machine `ganseg synthesize` runs on the GPU (hence the kernel, under no_grad) by default."""
    import argparse

    from ganseg import synthesize

    for visible, device in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda v=visible: v)
        p = argparse.ArgumentParser()
        synthesize.add_arguments(p)
        assert p.get_default("device") == device


def test_nhwc_layout_only_on_cpu():
    """Issue 9: the NHWC choice was measured on CPU; it must not leak onto other devices."""
    src = (ROOT / "ganseg" / "ops.py").read_text()
    assert 'feats[0].device.type == "cpu" and blocks[0].shape[0] >= 16' in src


def test_kernel_sources_ship_with_the_package():
    for name in ops_cuda.SOURCES + ops_cuda.HEADERS:
        assert (CSRC / name).is_file(), name
    text = (CSRC / "resample_accumulate.cu").read_text() + (CSRC / "resample_accumulate.cuh").read_text()
    assert "torch" not in re.sub(r"//.*", "", text), "the kernel source must stay torch-free (plain CUDA C++)"


# --------------------------------------------------------------------------------------------
# The GPU check script's CPU smoke mode (issue 13 runs the full mode on an H100/H200)

def test_gpu_kernel_check_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_kernel_check.py"), "--smoke",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "gpu_kernel_check.json").read_text())
    assert res["mode"] == "smoke"
    parity = res["parity"]
    assert parity and all(row["status"] in ("ok", "absent") for row in parity)
    measured = [row for row in parity if row["status"] == "ok"]
    assert measured and all(row["pass"] for row in measured), measured
    if not torch.cuda.is_available():
        cuda_rows = [row for row in parity + res["timings"] if row.get("impl") == "cuda"]
        assert cuda_rows and all(row["status"] == "absent" and "no CUDA device" in row["reason"] for row in cuda_rows)
    assert any(row["status"] == "ok" for row in res["timings"])
    gen = [row for row in res["timings"] if row["op"].startswith("generator synthesis")]
    assert gen and gen[0]["status"] == "ok" and res["generator_ms"] == gen[0]["median_ms"]
    fused = [row for row in res["timings"] if row["status"] == "ok" and row["op"].startswith("fused op")]
    assert fused and all(row["flops"] > 0 and row["bytes"] > 0 and row["of_generator"] > 0 for row in fused)
    assert all(row["bound_ms"] is None for row in fused)  # CPU: no PEAKS entry, said so
    md = (tmp_path / "gpu_kernel_check.md").read_text()
    assert "## Parity" in md and "## Timings" in md and "| fused op | torch | fp32 |" in md
    assert "x bound" in md and "unknown device 'cpu'" in md
    assert (tmp_path / "gpu_kernel_check.png").read_bytes()[:4] == b"\x89PNG"
    # --budget-s: the sizes not started are listed, the file is still written
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_kernel_check.py"), "--smoke", "--budget-s", "0",
                        "--sizes", "16", "32", "--out", str(tmp_path / "budget")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "budget" / "gpu_kernel_check.json").read_text())
    assert res["sizes_skipped_for_budget"] == [16, 32] and not res["parity"]


# --------------------------------------------------------------------------------------------
# The roofline arithmetic of the GPU checks

def _gkc():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_kernel_check

    return gpu_kernel_check


CONFIG_F = [(512, 4)] + [(c, r) for c, r in ((512, 8), (512, 16), (512, 32), (512, 64), (256, 128), (128, 256),
                                              (64, 512), (32, 1024)) for _ in range(2)]


def test_roofline_peaks_by_device_name():
    gkc = _gkc()
    assert gkc.peak_for("NVIDIA H200").name == "H200 SXM" and gkc.peak_for("NVIDIA H200").hbm_tb_s == 4.8
    assert gkc.peak_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert gkc.peak_for("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert gkc.peak_for("NVIDIA A100-SXM4-80GB").name == "A100 80GB"
    assert gkc.peak_for("NVIDIA A100-SXM4-40GB").name == "A100 40GB"
    assert gkc.peak_for("NVIDIA GeForce RTX 4090") is None and gkc.peak_for(None) is None
    rl = gkc.roofline({"flops": 1e12, "bytes": 1e9}, None, "BF16")
    assert rl["bound_ms"] is None and "unknown device" in rl["bound_by"]


def test_roofline_of_the_issue_19_step():
    """512² from a 1024² config-f generator (17 layers, 5568 channels), K = 128, batch 1: ~20.8 GFLOP
    of projection (1024² layers area-pooled first) and ~0.66 GB of FP32 traffic; on an H200 the
    step is memory-bound at ~0.14 ms (FP32 inputs, 3xTF32) / ~0.07 ms (BF16)."""
    gkc = _gkc()
    shapes = [(c, r, 1) for c, r in CONFIG_F]
    assert sum(c for c, _ in CONFIG_F) == 5568 and len(CONFIG_F) == 17
    fp32 = gkc.step_cost(shapes, 1, 128, 512, 4)
    assert fp32["flops"] == 2 * 128 * sum(c * min(r, 512) ** 2 for c, r in CONFIG_F) == 20_755_513_344
    assert fp32["bytes"] == 4 * (sum(c * r * r for c, r in CONFIG_F) + 128 * 512 * 512 + 128 * 5568) == 662_700_032
    h200 = gkc.peak_for("NVIDIA H200")
    rl = gkc.roofline(fp32, h200, "3xTF32")
    assert rl["compute_ms"] == pytest.approx(3 * 20.755513344e9 / 494.7e12 * 1e3)
    assert rl["memory_ms"] == pytest.approx(0.6627e9 / 4.8e12 * 1e3, rel=1e-3)
    assert rl["bound_by"] == "memory" and rl["bound_ms"] == pytest.approx(0.138, abs=1e-3)
    bf16 = gkc.roofline(gkc.step_cost(shapes, 1, 128, 512, 2), h200, "BF16")
    assert bf16["bound_ms"] == pytest.approx(0.069, abs=1e-3) and bf16["bound_by"] == "memory"
    # plain FP32 on the CUDA cores would be compute-bound (the torch op's cuBLAS FP32 rows)
    assert gkc.roofline(fp32, h200, "FP32")["bound_by"] == "compute"
    lab = gkc.step_cost(shapes, 1, 10, 512, 4, labeling=True)
    assert lab["bytes"] == 4 * (sum(c * r * r for c, r in CONFIG_F) + 10 * 5568) + 9 * 512 * 512
    # a row without FLOPs (the plugin kernel on projected maps) is bound by its bytes alone
    moved = gkc.roofline({"flops": 0, "bytes": 4.8e9}, h200, None)
    assert moved["bound_ms"] == pytest.approx(1.0) and moved["bound_by"] == "memory"
    with pytest.raises(ValueError, match="math mode"):
        gkc.roofline(fp32, h200, None)
    assert gkc.tensor_core_mode(torch.float32, 3) == "3xTF32" and gkc.tensor_core_mode(torch.float32, 1) == "TF32"
    assert gkc.tensor_core_mode(torch.bfloat16, 3) == "BF16"


def test_gpu_kernel_check_rows_carry_their_bound(tmp_path, monkeypatch):
    """The smoke run with a known device's peaks (as on an H200): every measured row with a model
    gets bound, bound_by and measured / bound, and the table prints them."""
    gkc = _gkc()
    monkeypatch.setattr(gkc, "peak_for", lambda name: gkc.PEAKS[0][1])
    assert gkc.main(["--smoke", "--sizes", "16", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_kernel_check.json").read_text())
    rows = [r for r in res["timings"] if r["status"] == "ok" and not r["op"].startswith("generator")]
    assert {r["op"].split(" (")[0] for r in rows} == {"fused op", "label variant", "plugin kernel"}
    assert all(r["bound_ms"] > 0 and r["x_bound"] == pytest.approx(r["median_ms"] / r["bound_ms"]) for r in rows)
    assert {r["tensor_cores"] for r in rows if r["op"].startswith("fused")} == {"FP32", "BF16"}  # torch paths
    md = (tmp_path / "gpu_kernel_check.md").read_text()
    assert "H200 SXM: 494.7 TF32" in md


# --------------------------------------------------------------------------------------------
# On a GPU machine: the real kernel against the torch path

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")


@pytest.fixture(scope="module")
def built_kernel():
    """The extension on a GPU machine: skipped if the build tools are missing, a FAILURE if it does not compile."""
    reason = ops_cuda.unavailable_reason()
    if reason is not None:
        pytest.skip(f"the CUDA extension cannot be built here: {reason}")
    return ops_cuda.load()


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["none", "lrelu"])
def test_gpu_kernel_matches_torch(built_kernel, dtype, activation):
    g = torch.Generator(device="cuda").manual_seed(0)
    feats = [torch.randn(2, c, r, r, device="cuda", generator=g) for r, c in ((4, 32), (8, 32), (16, 16), (32, 8), (64, 8))]
    w = torch.randn(13, 96, device="cuda", generator=g) / 96**0.5
    b = torch.randn(13, device="cuda", generator=g)
    with torch.no_grad():
        for size in (16, 32, 128):
            ref = ops.resample_accumulate([f.double() for f in feats], w.double(), b.double(), size, activation=activation,
                                          impl="torch")
            out = ops.resample_accumulate([f.to(dtype) for f in feats], w.to(dtype), b.to(dtype), size,
                                          activation=activation, impl="cuda")
            assert out.dtype == dtype
            err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
            assert err <= {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype], err
            labels, conf, ent = ops.resample_label([f.to(dtype) for f in feats], w.to(dtype), b.to(dtype), size,
                                                   impl="cuda")
            logits = ops.resample_accumulate([f.double() for f in feats], w.double(), b.double(), size, impl="torch")
            assert (labels.long() == logits.argmax(1)).float().mean() > 0.99
            p = logits.softmax(1)
            torch.testing.assert_close(conf.double(), p.amax(1), atol=3e-2, rtol=0)
            torch.testing.assert_close(ent.double(), -(p * p.log()).sum(1), atol=6e-2, rtol=0)


@cuda_only
def test_gpu_auto_uses_kernel_without_grad_and_torch_with_grad(built_kernel):
    feats = [torch.randn(1, 4, r, r, device="cuda") for r in (4, 8)]
    w = torch.randn(3, 8, device="cuda", requires_grad=True)
    with torch.no_grad():
        assert ops.resolve_impl("auto", [*feats, w]) == "cuda"
    assert ops.resolve_impl("auto", [*feats, w]) == "torch"
    out = ops.resample_accumulate(feats, w, None, 16)
    out.sum().backward()
    assert w.grad is not None
    with pytest.raises(BadInput, match="forward-only"):
        ops.resample_accumulate(feats, w, None, 16, impl="cuda")


@cuda_only
def test_gpu_fused_step_is_one_cuda_graph(built_kernel):
    """No host sync, shape-only allocations: the whole step — a head's first layer with its weight
    fold and fused activation, a linear head's labeling — replays from one CUDA graph and gives the
    eager result; K = 130 (two K tiles), S = 40 (tiles cross rows), a 80² layer area-pooled."""
    from ganseg import heads

    g = torch.Generator(device="cuda").manual_seed(1)
    layout = ((4, 40), (8, 24), (16, 20), (64, 8), (80, 4))
    feats = [torch.randn(1, c, r, r, device="cuda", generator=g) for r, c in layout]
    first = heads.FusedProjection([c for _, c in layout], 130, 40, False).cuda()
    linear = heads.FusedProjection([c for _, c in layout], 10, 40, False).cuda()
    with torch.no_grad():
        for p in (first, linear):
            p.bias.normal_()
            p.scales.uniform_(0.5, 2.0)

    def step():
        with torch.no_grad():
            out = first(feats, activation="lrelu")
            labels, conf, ent = linear.label(feats)
        return out, labels, conf, ent

    eager = step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b2 in zip(eager, static):
        assert torch.equal(a, b2)
    with torch.no_grad():
        ref = ops.resample_accumulate([f.double() for f in feats], first.folded_weight().double(), first.bias.double(),
                                      40, activation="lrelu", impl="torch")
    assert ((eager[0].double() - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@cuda_only
def test_gpu_tf32_follows_allow_tf32(built_kernel):
    g = torch.Generator(device="cuda").manual_seed(2)
    feats = [torch.randn(1, c, r, r, device="cuda", generator=g) for r, c in ((8, 64), (32, 64), (64, 32))]
    w = torch.randn(32, 160, device="cuda", generator=g) / 160**0.5
    ref = ops.resample_accumulate([f.double() for f in feats], w.double(), None, 32, impl="torch")
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        errs = {}
        for allow in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = allow
            with torch.no_grad():
                out = ops.resample_accumulate(feats, w, None, 32, impl="cuda")
            errs[allow] = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert errs[False] <= 1e-5 < errs[True] <= 8 * 2.0**-11, errs  # 3xTF32 is FP32-accurate, TF32 is not


@cuda_only
def test_gpu_synthesize_uses_the_kernel(built_kernel, monkeypatch):
    """`ganseg synthesize` on CUDA: the CNN head's first layer and a linear head's labels both run
    the fused kernel ("auto" under no_grad), with the CPU path's results."""
    from ganseg import heads, synthesize
    from ganseg.stylegan2 import Generator, GeneratorConfig

    mod = ops_cuda.load()
    calls = []
    for name in ("fused_accumulate", "fused_label"):
        original = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    G = Generator(GeneratorConfig(resolution=32, channels=[32, 32, 16, 16], z_dim=16, w_dim=16, mapping_layers=1))
    G = G.cuda().eval()
    cfg = synthesize.SynthConfig(n=2, batch=2)
    for kind, name in (("cnn", "fused_accumulate"), ("linear", "fused_label")):
        head = heads.head_for(G, kind, 4).cuda().eval()
        calls.clear()
        out = synthesize.label_batch(G, head, [0, 1], cfg)
        assert name in calls
        monkeypatch.setenv(ops.ENV_IMPL, "torch")
        ref = synthesize.label_batch(G, head, [0, 1], cfg)
        monkeypatch.delenv(ops.ENV_IMPL)
        assert (out["labels"] == ref["labels"]).mean() > 0.99
