"""Lazy loader of the resample-accumulate CUDA extension (the NVlabs `torch_utils/ops` pattern).

Why lazy and cached: building takes a minute (nvcc + a torch binding), needs a CUDA toolkit and
ninja, and is pointless on CPU. So nothing is built at import; the first CUDA call of
`ganseg.ops.resample_accumulate` (impl "auto" or "cuda") calls `load()`, which compiles
`ganseg/csrc/*.{cu,cpp}` with `torch.utils.cpp_extension.load` (for the visible GPU's architecture;
the tensor-core kernels need sm_80 or newer) into torch's extension cache
(`$TORCH_EXTENSIONS_DIR`, default `~/.cache/torch_extensions`) under a name that carries a digest
of the sources, so a changed kernel is rebuilt and an unchanged one is loaded in seconds. Without
ninja (which `load` needs) the same extension is built through setuptools instead. A failed
build is remembered for the process: "auto" then falls back to the torch path with ONE warning
saying why; an explicit impl="cuda" raises with the same reason.

The kernel source is plain CUDA C++ (no torch headers) so the test suite compiles it with nvcc on
machines without a GPU, and the TensorRT plugin (export/plugin/) compiles the very same file.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("resample_accumulate.cu", "fused_features.cu", "resample_accumulate_binding.cpp")
HEADERS = ("resample_accumulate.h", "resample_accumulate.cuh", "fused_features.h", "fused_features.cuh")
ACTIVATIONS = {"none": 0, "relu": 1, "lrelu": 2}  # codes of ganseg::Activation

_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None
_warned = False


def source_digest() -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:12]


def unavailable_reason() -> str | None:
    """Why the extension cannot be built here (checked without building), or None."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f"the GPU has compute capability {major}.{minor}; the tensor-core kernels (BF16/TF32 WMMA) "
                f"need 8.0 or newer (A100, H100, ...)")
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit found (install one with nvcc or set CUDA_HOME)"
    missing = [n for n in SOURCES + HEADERS if not (CSRC / n).is_file()]
    if missing:
        return f"kernel sources missing from the installed package: {', '.join(missing)} (reinstall ganseg)"
    return None


def load(verbose: bool = False) -> ModuleType:
    """The built extension; builds it on first use. Raises RuntimeError saying why it cannot."""
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is not None:
            raise RuntimeError(_failure)
        reason = unavailable_reason()
        if reason is not None:
            _failure = reason
            raise RuntimeError(reason)
        from torch.utils import cpp_extension

        name = f"ganseg_resample_accumulate_{source_digest()}"
        verbose = verbose or bool(os.environ.get("GANSEG_OPS_VERBOSE"))
        try:
            if cpp_extension.is_ninja_available():
                _module = cpp_extension.load(
                    name=name,
                    sources=[str(CSRC / n) for n in SOURCES],
                    extra_include_paths=[str(CSRC)],
                    extra_cflags=["-O3"],
                    extra_cuda_cflags=["-O3", "-lineinfo"],
                    verbose=verbose,
                )
            else:
                _module = _build_without_ninja(name, verbose)
        except Exception as exc:  # a compiler error: remembered, reported once by the caller
            first = " ".join(str(exc).split())[:400]
            _failure = f"building the extension failed: {type(exc).__name__}: {first}"
            raise RuntimeError(_failure) from exc
        return _module


def _build_without_ninja(name: str, verbose: bool) -> ModuleType:
    """`cpp_extension.load` needs ninja; without it, build the same extension through setuptools
    (BuildExtension with use_ninja=False: serial, slower, needs only nvcc and a C++ compiler) into
    the same cache folder, and import the result."""
    import contextlib
    import importlib.util
    import io

    from setuptools import Distribution
    from torch.utils import cpp_extension

    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()  # as load() does
    root = Path(cache) / f"{name}_setuptools"
    built = sorted(root.glob(f"{name}*.so"))
    if not built:
        ext = cpp_extension.CUDAExtension(name, [str(CSRC / n) for n in SOURCES], include_dirs=[str(CSRC)],
                                          extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]})
        dist = Distribution({"name": name, "ext_modules": [ext],
                             "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)}})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib, cmd.build_temp = str(root), str(root / "tmp")
        quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with quiet:
            dist.run_command("build_ext")
        built = sorted(root.glob(f"{name}*.so"))
        if not built:
            raise RuntimeError(f"setuptools reported success but wrote no {name}*.so under {root}")
    spec = importlib.util.spec_from_file_location(name, built[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def try_load() -> ModuleType | None:
    """`load()` for impl="auto": None on failure, after ONE warning per process saying why."""
    global _warned
    try:
        return load()
    except RuntimeError as exc:
        if not _warned:
            _warned = True
            warnings.warn(f"ganseg.ops: CUDA resample-accumulate kernel unavailable ({exc}); "
                          "using the torch implementation", RuntimeWarning, stacklevel=3)
        return None
