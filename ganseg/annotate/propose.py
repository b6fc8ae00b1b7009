"""Proposals: the few-shot head, trained on the masks saved so far, predicts the others.

Why: after the first shot the ReGAN head already knows something about the parts, so the person can
correct its mask instead of painting from nothing. The job runs `ganseg.headfit.train_head` (the
same trainer and head `train-head` uses) in a background thread, so the page keeps working while it
trains. It trains an ensemble of `ensemble` heads in one `train_head(..., ensemble=N)` call (the
shots' features computed once); torch's optimizer-step hook tells the page which head is training
and how far, without a second copy of the training loop; `HeadEnsemble`'s entropy map (via `ganseg.heads.head_probs`) marks the uncertain
pixels, and its per-image mean orders the unannotated images for "Suggest next".

torch and the generator are imported on the first proposal, not at start-up: painting never waits
for them.

Stopping: the job's thread is not a daemon and `Proposer.close` (called when the server closes, e.g.
on Ctrl-C) cancels it at the next optimizer step and joins it. Why: a daemon thread still inside
torch when the interpreter finalizes is ended by CPython with pthread_exit as soon as it reaches for
the GIL; that unwinding through torch's C++ frames (e.g. `THPVariable_conv2d` releasing the GIL)
calls std::terminate, and Ctrl-C during a proposal ended with "terminate called without an active
exception" and SIGABRT (seen in gdb: take_gil -> PyThread_exit_thread -> _Unwind_ForcedUnwind).
"""
from __future__ import annotations

import itertools
import math
import os
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ganseg.annotate.store import ShotStore
from ganseg.errors import BadInput, UserError


@dataclass
class ProposeConfig:
    ckpt: str | None = None   # generator; None: the one latents.safetensors names, else the bundled one
    head: str = "linear"      # seconds per proposal on a CPU; `cnn` is better and ~6x slower (docs/fewshot.md)
    steps: int = 100          # optimizer steps per head: 300 at lr 1e-3 were no better (docs/annotate.md)
    lr: float = 3e-3
    ensemble: int = 3         # heads; their disagreement/entropy marks uncertain pixels
    uncertain: float = 0.35   # a pixel is marked when entropy / log(K) exceeds this


@dataclass
class Proposal:
    labels: np.ndarray        # uint8 [H, W]
    uncertainty: np.ndarray   # uint8 [H, W]: entropy / log(K) * 255
    score: float              # mean normalized entropy: Suggest next's key


def propose_batch(G, head, w, noise_mode: str, log_k: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels uint8 [H, W], normalized entropy float [H, W] in [0, 1]) per latent of `w` [B, L, D]:
    the proposal and its uncertainty map; the map's mean is Suggest next's key (`Proposer.ranking`,
    and `benchmarks/autoshot_eval.py`'s suggest job, which measures what that pick is worth)."""
    import torch

    from ganseg.heads import head_probs

    with torch.no_grad():
        _, feats = G.synthesize_features(w=w, noise_mode=noise_mode)
        probs, unc = head_probs(head, feats)
    return [(p.argmax(0).to(torch.uint8).cpu().numpy(), (u / log_k).clamp(0, 1).cpu().numpy())
            for p, u in zip(probs, unc)]


def proposal_head_config(cfg: "ProposeConfig"):
    """The head recipe of a proposal: one `train_head` call for an ensemble of `cfg.ensemble` heads."""
    from ganseg.headfit import HeadTrainConfig

    return HeadTrainConfig(kind=cfg.head, steps=cfg.steps, lr=cfg.lr, ensemble=cfg.ensemble)


class Cancelled(Exception):
    """The job was asked to stop (`Proposer.close`)."""


_TORCH_THREADS: int | None = None  # torch's own default, read before the first proposal changes it


@contextmanager
def proposal_threads():
    """Run the block with torch's intra-op threads set to the idle cores (cores less the 1-minute load
    average), at least 1, at most torch's default; restored after (the setting is process-wide, and
    the tests run proposals in-process).

    Why: a proposal's ops are small (a 64² linear head step is ~10 ms on one core) and torch's OpenMP
    workers meet at the end of every op; when other processes keep the cores busy, a descheduled
    worker stalls every op. Measured on the shared 2-core VM at load 8: 2 threads 150-400 ms per
    step, 1 thread 10-19 ms (a 3-head proposal 75 s -> 18 s). On idle cores torch's default stands."""
    import torch

    global _TORCH_THREADS
    if _TORCH_THREADS is None:
        _TORCH_THREADS = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = cores - (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(_TORCH_THREADS, int(idle))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class JobState:
    state: str = "idle"       # idle | running | done | error | cancelled
    stage: str = ""
    progress: float = 0.0
    message: str = ""
    trained_on: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Proposer:
    """One background training job at a time; results kept per image name."""

    def __init__(self, store: ShotStore, cfg: ProposeConfig, log=print):
        self.store, self.cfg, self.log = store, cfg, log
        self.job = JobState()
        self.proposals: dict[str, Proposal] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._G = None
        self.ckpt = cfg.ckpt

    # ---------------------------------------------------------------- public

    def start(self) -> JobState:
        """Start training on the masks saved now (refused with a message when there are none)."""
        with self._lock:
            if self.job.state == "running":
                return self.job
            shots = self.store.annotated()
            if not shots:
                raise BadInput("Propose needs at least one saved mask: paint one image and save it (Ctrl+S) first")
            if not (self.store.folder / "latents.safetensors").is_file():
                raise BadInput(f"{self.store.folder}/latents.safetensors is missing: Propose needs the latents that "
                               f"`ganseg sample` writes beside the images (rerun it without --no-latents)")
            if self._cancel.is_set():
                raise BadInput("the server is stopping: no new proposal")
            self.job = JobState(state="running", stage="starting", trained_on=shots)
            # not a daemon: the interpreter must never finalize while this thread is inside torch
            self._thread = threading.Thread(target=self._run, args=(shots,), daemon=False, name="ganseg-propose")
            self._thread.start()
            return self.job

    def close(self, timeout: float | None = 60.0) -> bool:
        """Cancel a running job (it stops at its next optimizer step or prediction batch) and wait for
        its thread; True when no job thread is left. The server calls this when it closes."""
        with self._lock:
            self._cancel.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def status(self) -> dict:
        j = self.job
        return {"state": j.state, "stage": j.stage, "progress": round(j.progress, 3), "message": j.message,
                "trained_on": j.trained_on, "seconds": round(j.seconds, 1),
                "ranking": self.ranking(), "uncertain": self.cfg.uncertain}

    def ranking(self) -> list[dict]:
        """Unannotated images, most uncertain first (Suggest next)."""
        done = set(self.store.annotated())
        rows = [(p.score, n) for n, p in self.proposals.items() if n not in done]
        return [{"name": n, "uncertainty": round(s, 4)} for s, n in sorted(rows, reverse=True)]

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---------------------------------------------------------------- the job

    def _set(self, stage: str, progress: float) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        self.job.stage, self.job.progress = stage, progress

    @contextmanager
    def _each_step(self, on_step):
        """Call on_step(k) before the k-th optimizer step (k = 0, 1, ...) taken in this thread while the
        block runs: progress within a head, and the point where a cancelled job stops (`_set` raises
        Cancelled out of the step). torch's global optimizer hook, so the trainer is used unchanged."""
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        me, count = threading.current_thread(), itertools.count()

        def hook(optimizer, args, kwargs):
            if threading.current_thread() is me:
                on_step(next(count))

        handle = register_optimizer_step_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _generator(self, info: dict):
        from ganseg.checkpoints import load_generator

        if self._G is None:
            if self.ckpt is None and info.get("ckpt") not in (None, "default"):
                self.ckpt = info["ckpt"]  # the generator `ganseg sample` used for these images
            self._G = load_generator(self.ckpt)
        return self._G

    def _run(self, shots_names: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            with proposal_threads():
                self._train_and_predict(shots_names)
            self.job.state, self.job.progress = "done", 1.0
            self.job.message = (f"head trained on {len(shots_names)} shot(s) in {time.perf_counter() - t0:.1f} s; "
                                f"proposals ready for {len(self.proposals)} image(s)")
            self.log(f"propose: {self.job.message}")
        except Cancelled:
            self.job.state, self.job.message = "cancelled", "stopped: the server is closing"
            self.log("propose: training stopped (the server is closing)")
        except UserError as exc:
            self.job.state, self.job.message = "error", str(exc)
            self.log(f"propose: error: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug: shown in the page and with its traceback here
            self.job.state, self.job.message = "error", f"internal error ({type(exc).__name__}: {exc}); see the terminal"
            traceback.print_exc()
        self.job.seconds = time.perf_counter() - t0

    def _train_and_predict(self, shots_names: list[str]) -> None:
        import torch

        from ganseg.headfit import check_shots, train_head
        from ganseg.latents import load_latents
        from ganseg.shots import load_sampled_shots

        self._set("loading the generator", 0.02)
        lat, info = load_latents(self.store.folder / "latents.safetensors")
        G = self._generator(info)
        shots = load_sampled_shots(self.store.folder, G.resolution)  # reviewed masks only
        check_shots(G, shots)
        n, steps = self.cfg.ensemble, self.cfg.steps
        # one train_head call for the ensemble (seeds seed..seed+n-1, as `train-head --ensemble`): the
        # shots' features are computed once; the step hook reports which head is training
        cfg = proposal_head_config(self.cfg)
        cfg.validate(G)

        def stage(k: int) -> None:
            self._set(f"training head {k // steps + 1}/{n} on {len(shots)} shot(s)", 0.05 + 0.85 * k / (n * steps))

        stage(0)
        with self._each_step(stage):
            head = train_head(G, shots, cfg, progress=False)

        self._set("predicting", 0.9)
        seeds = lat["seeds"].tolist()
        by_seed = {e.seed: e for e in self.store.images.values()}
        todo = [(i, by_seed[s]) for i, s in enumerate(seeds) if s in by_seed]
        log_k = math.log(len(shots.class_names))
        out: dict[str, Proposal] = {}
        with torch.no_grad():
            for b in range(0, len(todo), 8):
                self._set("predicting", 0.9 + 0.1 * b / len(todo))
                chunk = todo[b: b + 8]
                w = lat["w"][[i for i, _ in chunk]].to(G.device)
                for (_, e), (lab, un) in zip(chunk, propose_batch(G, head, w, shots.noise_mode, log_k)):
                    if lab.shape != (e.height, e.width):  # the image was resized after sampling
                        from PIL import Image

                        from ganseg.labels import resize_labels

                        lab = resize_labels(lab, (e.height, e.width))
                        un = np.asarray(Image.fromarray(un.astype(np.float32)).resize((e.width, e.height)))
                    out[e.name] = Proposal(lab, (un * 255).round().astype(np.uint8), float(un.mean()))
        self.proposals = out
