"""Where the real Triton server comes from, and the environment its Python backend needs.

The `nvidia-pytriton` wheel bundles `tritonserver` (2.51) with only the Python backend, and keeps
one backend *stub* per Python version apart from the backend library. Triton looks for the stub in
`<backend-directory>/python/`, so we build a backend directory of our own (links into the wheel,
which stays untouched) in a cache folder. The stub is a separate process that embeds libpython and
finds its packages through the first `python3` on PATH, so the environment puts this interpreter's
`bin` first, and this interpreter's LIBDIR first on LD_LIBRARY_PATH (otherwise the stub may link a
system libpython of the same X.Y but another patch level, whose stdlib does not match).
Facts behind these choices: docs/serving.md ("How `ganseg serve` starts Triton").
"""
from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

from ganseg.errors import UserError

INSTALL_HINT = "install the serving extra: pip install 'ganseg[serve]' (nvidia-pytriton, tritonclient)"


def cache_dir() -> Path:
    """ganseg's cache folder: $XDG_CACHE_HOME/ganseg (default ~/.cache/ganseg)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ganseg"


def triton_root() -> Path:
    """The wheel's `pytriton/tritonserver` folder (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the Triton server is not installed; {INSTALL_HINT}")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise UserError(f"{root}: no bin/tritonserver in the nvidia-pytriton wheel; reinstall it ({INSTALL_HINT})")
    return root


def tritonserver_binary() -> Path:
    return triton_root() / "bin" / "tritonserver"


def _stub_for_this_python(root: Path) -> Path:
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir()) if (root / "python_backend_stubs").is_dir() else []
        raise UserError(f"nvidia-pytriton has no Python-backend stub for Python {ver} (it has {have}); "
                        f"run ganseg with one of those Python versions")
    return stub


def backend_directory() -> Path:
    """A backend directory whose `python/` links the wheel's backend library, utils and the stub
    matching this interpreter. Built once per wheel location; rebuilt if a link went stale."""
    root = triton_root()
    wanted = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": _stub_for_this_python(root),
    }
    for src in wanted.values():
        if not src.is_file():
            raise UserError(f"{src}: missing from the nvidia-pytriton wheel; reinstall it ({INSTALL_HINT})")
    import hashlib

    key = hashlib.sha256(f"{root}|{sys.version_info[:2]}".encode()).hexdigest()[:12]
    backends = cache_dir() / "triton-backends" / key
    pydir = backends / "python"
    if all((pydir / n).is_symlink() and os.readlink(pydir / n) == str(s) for n, s in wanted.items()):
        return backends
    pydir.mkdir(parents=True, exist_ok=True)
    for name, src in wanted.items():
        tmp = pydir / f".{name}.{os.getpid()}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(src, tmp)
        os.replace(tmp, pydir / name)  # atomic: a concurrent `ganseg serve` never sees a half-made link
    return backends


def server_environment(base: dict | None = None) -> dict[str, str]:
    """The environment for `tritonserver` (and so for every Python-backend stub it spawns)."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir] + [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir])
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + rest)
    # onnxruntime >= 1.32 writes under ~/.cache; keep it with ganseg's cache when unset
    env.setdefault("XDG_CACHE_HOME", str(cache_dir().parent))
    # each model instance sets its own intra-op threads; stop numpy/BLAS from adding more
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def available_backends() -> set[str]:
    """The backends the server started by ganseg can load: the folders of its backend directory
    (the pip wheel has the Python backend only; onnxruntime and tensorrt come with NVIDIA's
    container)."""
    return {d.name for d in backend_directory().iterdir() if d.is_dir()}


def cuda_device_count() -> int:
    """CUDA devices the driver reports (0 without a driver or a GPU). Asked through the driver
    library itself (`libcuda.so.1`: cuInit + cuDeviceGetCount), the same thing Triton asks, so a
    `KIND_GPU` model can be refused before Triton starts and fails with its own, vaguer, error."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def execution_env_path() -> str:
    """The venv (or prefix) the stubs run in: what EXECUTION_ENV_PATH would point at."""
    return sys.prefix
