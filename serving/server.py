"""`ganseg serve`: run the real Triton Inference Server (from the nvidia-pytriton wheel) on a model
repository, and `TritonServer`, the same thing as a context manager for tests and benchmarks.

    with TritonServer(repo) as server:          # free loopback ports, waits until every model is ready
        print(server.http_url, server.grpc_url)  # "127.0.0.1:PORT" (tritonclient's url form)

Why these choices:
- loopback by default and `--model-control-mode=none`: nobody on the network can load or unload
  models; what is in the repository at start is what is served.
- `--disable-auto-complete-config`: loads faster, and ganseg's configs are complete anyway.
- The server is started in a new session (process group), so stopping it also ends every
  Python-backend stub it spawned; SIGTERM first (Triton drains requests), SIGKILL after a timeout.
- The server dies with the process that started it (Linux `prctl(PR_SET_PDEATHSIG, SIGKILL)` in
  the child before exec): a `ganseg serve` killed with SIGKILL (no handler runs, no `finally`)
  used to leave tritonserver and its stubs holding the ports. The stubs need no help: each
  watches its parent and exits within ~0.3 s of tritonserver's death.
- The repository is checked before Triton starts: a model needing a backend this server lacks
  (the pip wheel has only the Python backend) or a GPU this machine lacks is one line naming the
  model and the command that rebuilds the repository for CPU, not Triton's "unable to find
  backend library".
- Readiness is polled on /v2/health/ready (strict readiness: every model loaded). If the server
  dies or is not ready in time, the error carries the tail of its log (port clash, stub failure,
  a model that failed to load).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ganseg.errors import UserError
from ganseg.serving import tritonenv

READY_TIMEOUT_S = 120.0
# error-level lines Triton always prints on a machine without a GPU
_HARMLESS = ("CudaDriverHelper has not been initialized", "unable to create stream")
STOP_TIMEOUT_S = 15.0
# the file `ganseg export triton` writes at a repository's root, naming the target it was built for
REPOSITORY_RECORD = "ganseg_repository.json"
# Triton's platform names -> the backend that loads them (ensembles need none)
_PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt",
                      "pytorch_libtorch": "pytorch", "tensorflow_graphdef": "tensorflow",
                      "tensorflow_savedmodel": "tensorflow"}
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM under `signals_interrupt`: a KeyboardInterrupt (so every `finally` and
    `except KeyboardInterrupt` unwinds as for Ctrl-C) that remembers its signal; `exit_code` is the
    shell's convention 128 + signal number (130 for SIGINT, 143 for SIGTERM), which `ganseg.cli`
    returns, so a scheduler sees that a job was terminated, not interrupted from the keyboard."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(signal.Signals(signum).name)


def free_port(host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in (avoid or set()):
            return port
    raise RuntimeError("no free port found")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def proc_stats() -> dict[int, list[bytes]]:
    """pid -> the fields of /proc/PID/stat after the command name (Linux): [state, ppid, pgrp, ...]."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stats[int(entry)] = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
    return stats


def _group_pids(pgid: int) -> list[int]:
    """Processes still alive in a process group."""
    return [pid for pid, fields in proc_stats().items() if int(fields[2]) == pgid and fields[0] != b"Z"]


def _die_with_parent():
    """A `preexec_fn` that makes the child get SIGKILL when the thread that started it dies
    (`PR_SET_PDEATHSIG`), or None where that does not apply.

    Why: `ganseg serve` stops Triton from `finally`/signal handlers, but SIGKILL (the OOM killer,
    `kill -9`, a CI runner's cleanup) runs none of them; the server, in its own session, then kept
    running with its stubs and ports. Linux only. Only from the main thread: the death signal
    follows the starting *thread*, and a worker thread that started a server and returned would
    take it down with it. The parent is compared after the call, in case it died in between.
    Between fork and exec the function calls only prctl and getppid (no lock is taken), so it is
    safe even while other threads run (the usual worry with `preexec_fn`)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nothing would signal us
            os._exit(1)

    return preexec


def _read_configs(repo: Path) -> dict[str, object]:
    """model folder name -> its parsed config.pbtxt (Triton's ModelConfig protobuf); configs that
    do not parse are left out (Triton names their error itself), and so is everything when
    tritonclient's protobuf classes are not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as mc
    except ImportError:
        return {}
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = text_format.Parse(path.read_text(), mc.ModelConfig())
        except Exception:  # noqa: BLE001 - text_format.ParseError, UnicodeDecodeError, OSError
            continue
    return configs


def check_repository(repo: Path) -> None:
    """A one-line UserError if a model of `repo` needs a backend this server does not have, or a
    GPU (`KIND_GPU` instances) this machine does not have; checked before starting Triton, whose
    own error is "unable to find backend library for backend 'onnxruntime'" after the start.

    The fix named is the exact `ganseg export triton` command that rebuilds the repository for
    CPU (from the ONNX file a GPU repository keeps), or NVIDIA's container for foreign models."""
    configs = _read_configs(repo)
    if not configs:
        return
    have = tritonenv.available_backends()
    gpus = None
    needs: list[str] = []
    for name, cfg in configs.items():
        backend = cfg.backend or _PLATFORM_BACKENDS.get(cfg.platform, "")
        own_lib = any((repo / name).glob(f"**/libtriton_{backend}.so")) if backend else False
        if backend and backend not in have and not own_lib:
            via = f"platform {cfg.platform}" if cfg.platform else f"backend {backend}"
            needs.append(f"model {name} needs Triton's {backend} backend ({via})")
        elif any(g.kind == g.KIND_GPU for g in cfg.instance_group):
            gpus = tritonenv.cuda_device_count() if gpus is None else gpus
            if gpus == 0:
                needs.append(f"model {name} asks for GPU instances (instance_group kind KIND_GPU)")
    if not needs:
        return
    target, pipeline = None, "bls"
    try:
        record = json.loads((repo / REPOSITORY_RECORD).read_text())
        target, pipeline = record.get("target"), record.get("pipeline", "bls")
    except (OSError, ValueError, AttributeError):
        pass
    made = f" (made by `ganseg export triton --target {target}`)" if target and target != "cpu" else ""
    server = (f"this tritonserver (pip's nvidia-pytriton) has only the {', '.join(sorted(have))} backend"
              f"{'' if tritonenv.cuda_device_count() else ' and this machine has no CUDA GPU'}")
    pipe = f" --pipeline {pipeline}" if pipeline != "bls" else ""
    onnx = repo / "ganseg_unet" / "1" / "model.onnx"
    if made:  # a ganseg GPU repository: the same models, rebuilt for this server
        src = f"--onnx {onnx}" if onnx.is_file() else "--unet RUN"
        fix = (f"rebuild the repository for CPU with `ganseg export triton {src} --repo {repo}{pipe}`"
               + ("" if onnx.is_file() else " (RUN: the UNet it was made from)")
               + ", or serve it on a GPU server with NVIDIA's Triton container (docs/serving.md)")
    else:
        fix = ("serve it with NVIDIA's Triton container (docs/serving.md), or write a CPU repository with "
               f"`ganseg export triton --repo {repo}`")
    raise UserError(f"--repo {repo}{made}: {'; '.join(needs)}, but {server}; {fix}")


class TritonServer:
    """The real `tritonserver` on `repo`, as a context manager (also `.start()` / `.stop()`).

    Ports left None are chosen free on the loopback interface. `.http_url`, `.grpc_url` and
    `.metrics_url` are "host:port" strings (what tritonclient takes); `.log_text()` is the server
    log so far.
    """

    def __init__(self, repo: str | os.PathLike, http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, log_path: str | os.PathLike | None = None,
                 host: str = "127.0.0.1", ready_timeout: float = READY_TIMEOUT_S, log_verbose: int = 0,
                 extra_args: list[str] | None = None):
        self.repo = Path(repo)
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.ready_timeout = ready_timeout
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args or [])
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None

    # -- addresses ----------------------------------------------------------------------------
    def _url(self, kind: str) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.ports[kind]}"

    @property
    def http_url(self) -> str:
        return self._url("http")

    @property
    def grpc_url(self) -> str:
        return self._url("grpc")

    @property
    def metrics_url(self) -> str:
        return self._url("metrics")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # -- lifecycle ----------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.repo.is_dir():
            raise UserError(f"--repo {self.repo}: no such folder; write one with "
                            f"`ganseg export triton --repo {self.repo}`")
        if not any(self.repo.glob("*/config.pbtxt")):
            raise UserError(f"--repo {self.repo}: no model folders with a config.pbtxt; fill it with "
                            f"`ganseg export triton --repo {self.repo}`")
        if not self.ready_timeout > 0:  # also NaN
            raise UserError(f"--ready-timeout {self.ready_timeout}: pass a number of seconds > 0")
        check_repository(self.repo)  # what the repository needs first: no port fixes a missing backend
        used: set[int] = set()
        for kind, port in self.ports.items():
            if port is None:
                continue
            if not 0 < int(port) < 65536:
                raise UserError(f"--{kind}-port {port}: not a port number (1..65535)")
            if port in used:
                raise UserError(f"--{kind}-port {port}: already given to another endpoint; use distinct ports")
            if _port_in_use(self.host, int(port)):
                raise UserError(f"--{kind}-port {port}: something already listens on {self.host}:{port}; "
                                f"stop it or pick another port")
            used.add(int(port))
        for kind, port in self.ports.items():
            if port is None:
                self.ports[kind] = free_port(self.host, used)
                used.add(self.ports[kind])

    def command(self) -> list[str]:
        root = tritonenv.triton_root()
        return [str(tritonenv.tritonserver_binary()),
                f"--model-repository={self.repo.resolve()}",
                f"--backend-directory={tritonenv.backend_directory()}",
                f"--cache-directory={root / 'caches'}",
                "--model-control-mode=none",
                f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
                "--exit-timeout-secs=5", "--strict-readiness=true", "--disable-auto-complete-config",
                f"--log-verbose={int(self.log_verbose)}",
                *self.extra_args]

    def start(self) -> "TritonServer":
        if self.process is not None:
            raise RuntimeError("server already started")
        self._check()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="ganseg-triton-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, env=tritonenv.server_environment(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=_die_with_parent())
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise UserError(f"tritonserver exited with code {code} before it was ready: {self._reason()}; "
                                f"fix that and retry (server log: {self.log_path})")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise UserError(f"tritonserver was not ready after {self.ready_timeout:.0f} s: {self._reason()}; "
                                f"raise --ready-timeout or fix that (server log: {self.log_path})")
            time.sleep(0.1)

    def _reason(self) -> str:
        """One line: the server's first real error (a model that failed to load, a stub that did
        not start, a port in use)."""
        text = self.log_text()
        if "address already in use" in text.lower():
            return "a port is already in use (pick other ports, or omit them for free ones)"
        for ln in text.splitlines():
            if ln.startswith("E") and not any(h in ln for h in _HARMLESS):
                msg = ln.split("] ", 1)[-1].strip().strip('"').split("\\n")[0]
                return " ".join(msg.split())[:400]
        last = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("|", "+"))]
        return " ".join(last[-1].split())[:400] if last else "no log output"

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 12) -> str:
        """The server's error lines (the harmless CPU-only ones left out) and its last lines, without
        the start-up option table: what explains a failed start."""
        text = [ln for ln in self.log_text().splitlines() if ln.strip() and not ln.startswith(("|", "+"))]
        errors = [ln for ln in text if ln.startswith("E") and not any(h in ln for h in _HARMLESS)]
        tail = [ln for ln in text[-lines:] if ln not in errors]
        return "\n".join(errors[-20:] + tail)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the server (Triton drains and unloads), SIGKILL it after `timeout`, then its
        whole process group if a stub is still there; returns its exit code. Nothing of it is left
        running afterwards.

        The server alone is killed first: its stubs notice and exit on their own within ~0.3 s,
        unlinking their shared-memory regions; killed together with it, they leave 1 MB
        `/dev/shm/triton_python_backend_shm_region_*` files behind."""
        p = self.process
        if p is None:
            return None
        pgid = p.pid  # start_new_session: the server leads its own group, stubs included
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        deadline = time.monotonic() + 5.0
        while _group_pids(pgid) and time.monotonic() < deadline:  # stubs exit right after the server
            time.sleep(0.05)
        if _group_pids(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = p.wait()
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_log and self.log_path is not None and exc[0] is None:
            try:
                self.log_path.unlink()
            except OSError:
                pass


@contextlib.contextmanager
def signals_interrupt(signals=(signal.SIGINT, signal.SIGTERM)):
    """While inside (main thread only), the first SIGINT or SIGTERM raises `Interrupted` (a
    KeyboardInterrupt whose `exit_code` is 128 + the signal: 130, 143), so
    `with TritonServer(...)` / `try: ... finally: server.stop()` unwind and stop the server and its
    Python-backend stubs; later signals are ignored, so a second one cannot cut that stop short
    (it is bounded: SIGKILL after STOP_TIMEOUT_S). The previous handlers are restored on exit.

    Why: Python's default SIGTERM ends the process at once, without `finally` blocks, leaving a
    tritonserver (its own session) and its stubs running; `ganseg serve` and `ganseg client --serve`
    both start a server and both must take it down with them."""
    fired = False

    def handler(signum, _frame):
        nonlocal fired
        if not fired:
            fired = True
            raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------
# the bundled default repository

def default_repository() -> Path:
    """A CPU repository for the bundled default UNet, exported on first use into the cache
    ($XDG_CACHE_HOME/ganseg/triton/default-<hash>): the hash covers the weights and ganseg's
    version and the code that writes the configs, so a new default UNet, a new ganseg or a new
    config layout gets a fresh export."""
    import hashlib
    import shutil

    from ganseg import __version__
    from ganseg.export import triton_repository
    from ganseg.export.triton_repository import MARKER, build_repository
    from ganseg.unet import DEFAULT_UNET

    if not DEFAULT_UNET.is_file():
        raise UserError(f"the bundled default UNet ({DEFAULT_UNET}) is not installed; pass --repo DIR "
                        f"(write one with `ganseg export triton --unet RUN --repo DIR`)")
    h = hashlib.sha256(DEFAULT_UNET.read_bytes())
    h.update(__version__.encode())
    from ganseg import pipeline

    # the configs are generated from triton_repository.py and the pipeline's contract (limits, names,
    # parameters): a change to either is a new export, even within one ganseg version
    for src in (Path(triton_repository.__file__), Path(pipeline.__file__)):
        h.update(src.read_bytes())
    repo = tritonenv.cache_dir() / "triton" / f"default-{h.hexdigest()[:12]}"
    if (repo / MARKER).is_file():
        return repo
    tmp = repo.with_name(f".{repo.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    print(f"exporting the bundled default UNet to a Triton repository: {repo} (first use only)")
    build_repository(tmp)
    try:
        os.replace(tmp, repo)  # atomic: a concurrent first use keeps one complete copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (repo / MARKER).is_file():
            raise
    return repo


# --------------------------------------------------------------------------------------------
# CLI: ganseg serve

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=None,
                   help="model repository (default: the bundled default UNet, exported on first use into the cache)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default loopback; 0.0.0.0 exposes the server to the network)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log", default=None, help="server log file (default: a temporary file, shown on errors)")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    p.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait for all models")


def run(args: argparse.Namespace) -> int:
    if not args.ready_timeout > 0:  # before the first-use export of the default repository
        raise UserError(f"--ready-timeout {args.ready_timeout}: pass a number of seconds > 0")
    repo = Path(args.repo) if args.repo else default_repository()
    server = TritonServer(repo, args.http_port, args.grpc_port, args.metrics_port, log_path=args.log,
                          host=args.host, ready_timeout=args.ready_timeout, log_verbose=args.log_verbose)
    started = False
    with signals_interrupt():
        try:
            try:
                server.start()
            except UserError:
                if server.log_text():  # the server ran: show why it did not become ready
                    print(f"tritonserver log ({server.log_path}):\n{server.log_tail()}", file=sys.stderr, flush=True)
                raise
            started = True
            models = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
            print(f"Triton {repo} ready (pid {server.pid}): HTTP {server.http_url}  gRPC {server.grpc_url}  "
                  f"metrics http://{server.metrics_url}/metrics\nmodels: {', '.join(models)}\n"
                  f"log: {server.log_path}\nCtrl-C stops it.", flush=True)
            while server.is_running():
                time.sleep(0.2)
            print(f"tritonserver exited unexpectedly (code {server.process.returncode}); log tail:\n"
                  f"{server.log_tail()}", flush=True)
            return 1
        except KeyboardInterrupt:
            if not started:  # interrupted while starting: start() has stopped the server already
                raise
            print("stopping Triton ...", flush=True)
        finally:
            code = server.stop()
    print(f"Triton stopped (exit code {code})")
    if args.log is None and server.log_path is not None:  # a clean stop: the temporary log is not needed
        server.log_path.unlink(missing_ok=True)
    return 0
