"""Proposals: the few-shot head, trained on the masks saved so far, predicts the others.

Why: after the first shot the ReGAN head already knows something about the parts, so the person can
correct its mask instead of painting from nothing. The job runs `ganseg.training.train_head` (the
same trainer and head `train-head` uses) in a background thread, so the page keeps working while it
trains. It trains an ensemble of `ensemble` heads one by one (each is `train_head` with its own
seed, exactly what `train_head(..., ensemble=N)` builds) so that the page can show which head is
training; `HeadEnsemble`'s entropy map (via `ganseg.synthesize.head_probs`) marks the uncertain
pixels, and its per-image mean orders the unannotated images for "Suggest next".

torch and the generator are imported on the first proposal, not at start-up: painting never waits
for them.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field, replace

import numpy as np

from ganseg.annotate.store import ShotStore
from ganseg.errors import BadInput, UserError


@dataclass
class ProposeConfig:
    ckpt: str | None = None   # generator; None: the one latents.safetensors names, else the bundled one
    head: str = "linear"      # seconds per proposal on a CPU; `cnn` is better and ~6x slower (docs/fewshot.md)
    steps: int = 300          # optimizer steps per head
    ensemble: int = 3         # heads; their disagreement/entropy marks uncertain pixels
    uncertain: float = 0.35   # a pixel is marked when entropy / log(K) exceeds this


@dataclass
class Proposal:
    labels: np.ndarray        # uint8 [H, W]
    uncertainty: np.ndarray   # uint8 [H, W]: entropy / log(K) * 255
    score: float              # mean normalized entropy: Suggest next's key


@dataclass
class JobState:
    state: str = "idle"       # idle | running | done | error
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
            self.job = JobState(state="running", stage="starting", trained_on=shots)
            self._thread = threading.Thread(target=self._run, args=(shots,), daemon=True, name="ganseg-propose")
            self._thread.start()
            return self.job

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
        self.job.stage, self.job.progress = stage, progress

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
            self._train_and_predict(shots_names)
            self.job.state, self.job.progress = "done", 1.0
            self.job.message = (f"head trained on {len(shots_names)} shot(s) in {time.perf_counter() - t0:.1f} s; "
                                f"proposals ready for {len(self.proposals)} image(s)")
            self.log(f"propose: {self.job.message}")
        except UserError as exc:
            self.job.state, self.job.message = "error", str(exc)
            self.log(f"propose: error: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug: shown in the page and with its traceback here
            self.job.state, self.job.message = "error", f"internal error ({type(exc).__name__}: {exc}); see the terminal"
            traceback.print_exc()
        self.job.seconds = time.perf_counter() - t0

    def _train_and_predict(self, shots_names: list[str]) -> None:
        import torch

        from ganseg.heads import HeadEnsemble
        from ganseg.sample import load_latents
        from ganseg.shots import load_sampled_shots
        from ganseg.synthesize import head_probs
        from ganseg.training.train_head import HeadTrainConfig, check_shots, train_head

        self._set("loading the generator", 0.02)
        lat, info = load_latents(self.store.folder / "latents.safetensors")
        G = self._generator(info)
        shots = load_sampled_shots(self.store.folder, G.resolution)
        check_shots(G, shots)
        cfg = HeadTrainConfig(kind=self.cfg.head, steps=self.cfg.steps)
        cfg.validate(G)
        heads = []
        for k in range(self.cfg.ensemble):
            self._set(f"training head {k + 1}/{self.cfg.ensemble} on {len(shots)} shot(s)",
                      0.05 + 0.8 * k / self.cfg.ensemble)
            heads.append(train_head(G, shots, replace(cfg, seed=cfg.seed + k), progress=False))
        head = heads[0] if len(heads) == 1 else HeadEnsemble(heads).eval()

        self._set("predicting", 0.9)
        seeds = lat["seeds"].tolist()
        by_seed = {e.seed: e for e in self.store.images.values()}
        todo = [(i, by_seed[s]) for i, s in enumerate(seeds) if s in by_seed]
        log_k = math.log(len(shots.class_names))
        out: dict[str, Proposal] = {}
        with torch.no_grad():
            for b in range(0, len(todo), 8):
                chunk = todo[b: b + 8]
                w = lat["w"][[i for i, _ in chunk]].to(G.device)
                _, feats = G.synthesize_features(w=w, noise_mode=shots.noise_mode)
                probs, unc = head_probs(head, feats)
                for (_, e), p, u in zip(chunk, probs, unc):
                    lab = p.argmax(0).to(torch.uint8).cpu().numpy()
                    un = (u / log_k).clamp(0, 1).cpu().numpy()
                    if lab.shape != (e.height, e.width):  # the image was resized after sampling
                        from PIL import Image

                        lab = np.asarray(Image.fromarray(lab).resize((e.width, e.height), Image.Resampling.NEAREST))
                        un = np.asarray(Image.fromarray(un.astype(np.float32)).resize((e.width, e.height)))
                    out[e.name] = Proposal(lab, (un * 255).round().astype(np.uint8), float(un.mean()))
        self.proposals = out
