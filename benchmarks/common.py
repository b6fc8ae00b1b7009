"""The one helper every benchmark uses: timing, percentiles, environment record, atomic result files.

Why one helper: a number is only worth keeping with the conditions that made it. Every result file
written through here carries the machine (CPU model, cores, GPU), the library versions, the git
commit, the date, the host and the load average, and every timing is a median over repetitions
taken after a warm-up and behind a device synchronization (nanoGPT's bench.py pattern: burn-in
steps first, then measured steps, each fenced by `torch.cuda.synchronize()` on a GPU, since CUDA
calls return before the work is done). Files are written atomically (`ganseg.images.write_atomic`),
so an interrupted benchmark never leaves half a table.

Benchmarks import it as `from common import ...` (they run as scripts from `benchmarks/`) or as
`benchmarks.common` from the repository root. Importing it also makes the benchmarks run from a
plain copy of the tree with ganseg not installed (a GPU machine): the root goes on `sys.path` and
`ganseg.bootstrap` maps the stage folders, before anything from ganseg is imported.
"""
from __future__ import annotations

import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a script in benchmarks/ has benchmarks/ on sys.path, not the root
    sys.path.insert(0, str(ROOT))
from ganseg import bootstrap  # noqa: E402

bootstrap.install(ROOT)
from ganseg.images import write_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PERCENTILES = (50, 90, 95, 99)
VERSIONED = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tritonclient", "nvidia-pytriton",
             "matplotlib", "Pillow")


# --------------------------------------------------------------------------------------------
# Timing

def device_sync(device: Any = None) -> Callable[[], None]:
    """A function that waits for queued work on `device` (CUDA: synchronize; CPU: nothing to wait for)."""
    dev = str(device) if device is not None else "cpu"
    if dev.startswith("cuda"):
        import torch

        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


@dataclass
class Timing:
    """Seconds per measured call (warm-up calls excluded) and how many items one call handles."""
    samples: list[float]
    warmup: int
    items: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def items_per_s(self) -> float:
        return self.items / self.median

    def summary(self) -> dict:
        """JSON-ready: median and percentiles in milliseconds, items/s from the median."""
        return {"median_ms": 1e3 * self.median,
                **{f"p{p}_ms": 1e3 * v for p, v in percentiles(self.samples).items()},
                "items_per_s": self.items_per_s, "repeats": len(self.samples), "warmup": self.warmup,
                "items_per_call": self.items, **self.extra}


def measure(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, min_seconds: float = 0.0,
            max_repeats: int | None = None, max_seconds: float | None = None, items: int = 1,
            sync: Callable[[], None] | None = None) -> Timing:
    """Time `fn()` after `warmup` burn-in calls: at least `repeats` calls and `min_seconds` of measuring
    (capped at `max_repeats` calls), each call fenced by `sync()` so queued device work is counted.
    `max_seconds` bounds a slow point: once that much time went into timed calls, stop after the
    second sample (a median needs two) even if `repeats` is not reached."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    start = time.perf_counter()

    def more() -> bool:
        n, spent = len(samples), time.perf_counter() - start
        if max_seconds is not None and n >= min(2, repeats) and spent >= max_seconds:
            return False
        if n < repeats:
            return True
        return spent < min_seconds and (max_repeats is None or n < max_repeats)

    while more():
        t = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t)
    return Timing(samples, warmup, items)


def percentiles(samples: Iterable[float], ps: Sequence[float] = PERCENTILES) -> dict[int | float, float]:
    """Linear-interpolated percentiles (numpy's default method) of a non-empty sample."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("percentiles of an empty sample")
    out = {}
    for p in ps:
        pos = (len(xs) - 1) * p / 100
        lo, hi = math.floor(pos), math.ceil(pos)
        out[p] = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return out


def median_of(runs: Sequence[dict], keys: Sequence[str]) -> dict:
    """Per-key median over repeated measurement dicts (interleaved repeats on a shared CPU)."""
    return {k: statistics.median(r[k] for r in runs) for k in keys}


# --------------------------------------------------------------------------------------------
# Environment

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    """git's answer about this tree, or None. A copy without a `.git` of its own (a GPU machine's
    plain copy) has no commit: git would answer for whatever repository encloses the copy."""
    if not (ROOT / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _gpu() -> dict:
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch not importable"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no CUDA device visible to torch (torch.cuda.is_available() is False)"}
    return {"available": True, "count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(0),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30,
            "cuda": torch.version.cuda}


def versions(names: Iterable[str] = VERSIONED) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def environment(**extra: Any) -> dict:
    """Machine, versions, commit, date, host and load: stored with every result."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "host": socket.gethostname(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "torch_threads": threads,
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_gb": _mem_total_gb(), "os": platform.platform(), "gpu": _gpu(),
        "versions": versions(), "git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None,
        **extra,
    }


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None


def loaded_note(env: dict) -> str | None:
    """A sentence when the 1-minute load average shows other work competing for the cores."""
    load = max((env.get(k) or [0])[0] for k in ("load_avg_1_5_15", "load_avg_at_start"))
    cores = env.get("usable_cores") or 1
    if load > 0.5 * cores:
        return (f"measured on a loaded machine: 1-min load average {load:.1f} on {cores} cores "
                f"(other jobs were running; absolute timings are pessimistic and noisier)")
    return None


def result_stem(env: dict | None = None) -> str:
    """`<host>-<YYYY-MM-DD>` for benchmarks/results/<host>-<date>.json."""
    env = env or environment()
    return f"{env['host']}-{env['date'][:10]}"


def absent(reason: str, **keys: Any) -> dict:
    """A result row that could not be measured here, and why (never a made-up figure)."""
    return {**keys, "status": "absent", "reason": reason}


# --------------------------------------------------------------------------------------------
# Atomic result files

def write_json(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    write_atomic(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())
    return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    write_atomic(path, text.encode())
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG bytes, write them atomically, close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    path = Path(path)
    write_atomic(path, buf.getvalue())
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None,
                   digits: int = 1) -> str:
    """A GitHub markdown table; numeric columns right-aligned, floats with `digits` decimals."""
    rows = [list(r) for r in rows]
    if numeric is None:
        numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
                   for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def environment_markdown(env: dict) -> str:
    """A short paragraph saying where and when a table was measured."""
    v = env.get("versions", {})
    gpu = env["gpu"]["name"] if env.get("gpu", {}).get("available") else "no GPU"
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "numpy", "nvidia-pytriton", "tritonclient")
                     if v.get(k))
    extra = "".join(f", {k} {env[k]}" for k in ("tritonserver", "perf_analyzer") if env.get(k))
    text = (f"Measured on `{env['host']}` at {env['date']} (commit {str(env.get('git_commit'))[:10]}"
            f"{' + local changes' if env.get('git_dirty') else ''}): {env['cpu']}, {env['usable_cores']} usable cores, "
            f"{gpu}; Python {v.get('python')}, {libs}{extra}.\n")
    note = loaded_note(env)
    return text + (f"\n**Note:** {note}.\n" if note else "")
