"""Auto-shot measured the paper's way, with a loss ladder, against the pixel baseline (one table).

Protocol "generated" (the default; ReGAN's, `training/annotator.py`): the K shots are images the
GENERATOR made (seeds 0..K-1, psi = 1, as `ganseg sample`), painted by a simulated annotator (the
quality-probe UNet, supervised on 3 000 rendered faces with exact masks) standing in for a person in
`ganseg annotate`. 1-shot rows are the mean over 5 different single shots (seeds 0..4); 5- and
10-shot rows the mean over `--head-seeds` heads. For each shot set:
  head        the `--head-kind` head (MLP; the CNN head generalized less) on the shots (steps scale
              with K: each shot seen `--head-views` times, optionally on style-mixed copies of the
              shots: same layout, same masks);
  auto-shot   the head labels `--synth-n` generated images; a UNet is distilled from them together
              with the annotated shots themselves (`--shot-share` of the samples), then (self-training,
              `--self-train 1`) that UNet relabels the same images and a second UNet learns from its
              labels: the shipped recipe. The GAN-free UNet segments the rendered test photos.
Baselines and the loss ladder, every row scored on the same rendered test images (`--n-test` and
`--n-test-unet`) and, where it applies, against the annotator on `--n-heldout` held-out generated images:
  annotator                      the simulated annotator itself on rendered test (the teacher's ceiling)
  oracle                         a UNet on the same `--synth-n` generated images painted by the annotator
  supervised UNet on the generated shots   the pixel baseline: the same K annotated images, no GAN features
  supervised UNet                N = 10 / 100 / 1000 rendered train photos with exact masks
Protocol "inverted" (second rows, jobs `inv-heads`, `inv-autoK`): real photos as shots, inverted
into the GAN, as in this project's earlier tables. Job `suggest`: the second shot chosen by
`ganseg annotate`'s Suggest next vs the next seed in order (2-shot rows). Job `link:DIR`: another
head kind's students (a working folder made with another `--head-kind`) as ablation rows.

Jobs are idempotent and resumable (finished ones are skipped, UNets resume from their checkpoint),
so two processes can share the work on a 2-core machine, e.g.

    OMP_NUM_THREADS=1 python benchmarks/autoshot_eval.py --jobs annotator,heads,auto10,auto5 &
    OMP_NUM_THREADS=1 python benchmarks/autoshot_eval.py --jobs oracle,genshots,real10,auto1 &
    wait; python benchmarks/autoshot_eval.py --jobs table

    -> benchmarks/results/autoshot_eval.{json,md}, autoshot_overlays.png, autoshot_miou.png, autoshot_ladder.png
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ganseg.evaluate import score_row
from ganseg.faces import render_faces, split_seeds
from ganseg.labels import CLASS_NAMES, PALETTE
from ganseg.images import from_uint8, make_grid, overlay, save_png, write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, pyplot, save_figure, write_json, write_text  # noqa: E402

SHOTS = (1, 5, 10)
REAL_N = (10, 100, 1000)
AUTO_METHOD = "auto-shot UNet"
GENSHOT_METHOD = "supervised UNet on the generated shots"
SUGGEST_POOL = 32   # generated seeds annotate's Suggest next chooses the second shot from (job suggest)


@dataclass
class AutoshotEvalConfig:
    n_test: int = 50            # rendered test images every method is scored on (inversion is the slow part)
    n_test_unet: int = 1000     # larger rendered test set for everything that needs no inversion
    n_heldout: int = 200        # held-out generated images: head / UNet vs the annotator
    head_kind: str = "mlp"      # 10-shot head vs the annotator on held-out generated images: MLP 0.584 /
                                # 0.595 vs CNN 0.542 / 0.527 (2 seeds); its student 0.574 vs 0.557 on
                                # 1 000 rendered test images (2026-12-05; the CNN rows stay as ablation)
    head_steps: int = 0         # 0: scaled with K (each shot seen head_views times); > 0: fixed
    head_views: int = 400
    head_seeds: int = 2         # heads (each with its own students) per 5- and 10-shot row
    style_mix: int = 0          # style-mixed copies of each shot for the head (0 = off)
    synth_n: int = 3000
    truncation: float = 1.0
    shot_share: float = 0.5     # share of the distillation samples that are the annotated shots (10-shot
                                # student: 0.543 at 0.1, 0.557 at 0.5 on 1 000 rendered test images)
    self_train: int = 0         # self-training rounds after the first student (one round measured:
                                # +0.003 on rendered test, -0.04 vs the annotator on generated images)
    unet_width: int = 16
    unet_steps: int = 1000    # students and baselines alike (2 000 in tables before 2026-12-05)
    unet_batch: int = 16
    invert_steps: int = 200     # protocol "inverted" only
    ckpt: str = ""              # generator file; "" = the bundled default
    discriminator: str = ""     # ganseg discriminator for the inversion's perceptual term; "" = the
                                # bundled one with the bundled generator, none otherwise


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    write_atomic(path, buf.getvalue())


def _write_json(path: Path, doc: dict) -> None:
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode())


def head_ladder(heads: list[dict]) -> dict:
    """A row's head rungs from its heads' records (`head_TAG.json`): mean fit of their own shots and
    agreement with the annotator on held-out generated images; {} without records."""
    if not heads:
        return {}
    return {"head_fit": float(np.mean([h["fit"]["miou"] for h in heads])),
            "head_vs_annotator_heldout": float(np.mean([h["heldout_generated"]["miou"] for h in heads])),
            "head_steps": heads[0]["steps"], "head_runs": len(heads)}


def shot_sets(k: int, head_seeds: int) -> list[tuple[str, tuple[int, ...], int]]:
    """(tag, shot seeds, head seed) of every run behind a K-shot row."""
    from ganseg.training.annotator import ONE_SHOT_REPEATS, SHOT_SEEDS

    if k == 1:
        return [(f"k1s{j}", (SHOT_SEEDS[j],), 0) for j in range(ONE_SHOT_REPEATS)]
    return [(f"k{k}_h{s}", tuple(SHOT_SEEDS[:k]), s) for s in range(head_seeds)]


class Runner:
    def __init__(self, cfg: AutoshotEvalConfig, out: Path, results: Path = RESULTS):
        from ganseg.checkpoints import load_generator
        from ganseg.training.annotator import simulated_annotator

        self.cfg, self.out, self.results = cfg, out, results
        self.G = load_generator(cfg.ckpt or None).eval().requires_grad_(False)
        self.annotator = simulated_annotator(self.G.resolution)
        self.names = list(CLASS_NAMES)
        out.mkdir(parents=True, exist_ok=True)
        (out / "preds").mkdir(exist_ok=True)
        # cached inversions, heads, datasets and UNets are only valid for the settings that made them
        ident = {k: v for k, v in asdict(cfg).items() if k != "n_test_unet"}
        stamp = out / "settings.json"
        if stamp.is_file():
            old = json.loads(stamp.read_text())
            diff = [k for k in ident if old.get(k) != ident[k]]
            if diff:
                raise SystemExit(f"{out} holds results made with other settings ({', '.join(diff)}): "
                                 f"use another --out or the same settings")
        else:
            _write_json(stamp, ident)
        self._test = None
        self._heldout = None
        self._shots: dict[tuple[int, ...], tuple] = {}

    # -- shared inputs ------------------------------------------------------------------------
    def head_steps(self, k: int, batch: int) -> int:
        """The recipe's head steps for k shots: fixed by --head-steps, else each shot seen head_views times."""
        from ganseg.heads import head_steps_for

        return self.cfg.head_steps or head_steps_for(k, batch, self.cfg.head_views)

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        if self._test is None:
            n = max(self.cfg.n_test, self.cfg.n_test_unet)
            self._test = render_faces(split_seeds("test", n), resolution=self.G.resolution)
        return self._test

    def heldout(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Held-out generated images (never shots, never in a synthesized set) and the annotator's masks."""
        from ganseg.training.annotator import HELDOUT_SEED0, annotate_generated

        if self._heldout is None:
            self._heldout = annotate_generated(self.G, self.annotator,
                                               range(HELDOUT_SEED0, HELDOUT_SEED0 + self.cfg.n_heldout))
        return self._heldout

    def shots(self, seeds: tuple[int, ...]):
        from ganseg.shots import Shots
        from ganseg.training.annotator import annotate_generated

        if seeds not in self._shots:  # the head, the student's data and the pixel baseline share them
            ws, img, masks = annotate_generated(self.G, self.annotator, seeds, truncation_psi=self.cfg.truncation)
            self._shots[seeds] = (Shots(ws, torch.from_numpy(masks).long(), self.names), img, masks)
        return self._shots[seeds]

    def score_unet(self, run: Path) -> dict:
        """Rendered test (n_test and n_test_unet) and held-out generated (vs annotator) scores, cached."""
        from ganseg.unet import load_unet, segment_with_unet

        path = run / "scores.json"
        if path.is_file():
            return json.loads(path.read_text())
        unet = load_unet(run)
        img, lab = self.test_set()
        pred = segment_with_unet(unet, img)
        _save_npy(run / "pred_test.npy", pred[: self.cfg.n_test])
        _, himg, hlab = self.heldout()
        doc = {"test": score_row("", 0, pred[: self.cfg.n_test], lab[: self.cfg.n_test], self.names),
               "test_large": score_row("", 0, pred, lab, self.names),
               "heldout_generated": score_row("", 0, segment_with_unet(unet, himg), hlab, self.names)}
        _write_json(path, doc)
        return doc

    # -- the annotator ------------------------------------------------------------------------
    def annotator_job(self) -> dict:
        from ganseg.training.annotator import annotator_labels

        path = self.out / "annotator.json"
        if path.is_file():
            return json.loads(path.read_text())
        img, lab = self.test_set()
        pred = annotator_labels(self.annotator, img)
        _save_npy(self.out / "preds" / "annotator.npy", pred[: self.cfg.n_test])
        doc = {"test": score_row("", 0, pred[: self.cfg.n_test], lab[: self.cfg.n_test], self.names),
               "test_large": score_row("", 0, pred, lab, self.names)}
        _write_json(path, doc)
        print(f"annotator: rendered test mIoU {doc['test_large']['miou']:.3f}")
        return doc

    # -- heads on annotated generated shots ----------------------------------------------------
    def head(self, tag: str, seeds: tuple[int, ...], head_seed: int):
        from ganseg.evaluate import score_row as sr
        from ganseg.heads import load_head, save_head
        from ganseg.shots import Shots, shot_features
        from ganseg.heads import head_probs
        from ganseg.training.annotator import style_mixed_ws
        from ganseg.headfit import HeadTrainConfig, train_head

        path = self.out / f"head_{tag}.safetensors"
        info_path = self.out / f"head_{tag}.json"
        if path.is_file() and info_path.is_file():
            return load_head(path)
        shots, _, masks = self.shots(seeds)
        k = len(seeds)
        batch = min(2, k)
        steps = self.head_steps(k, batch)
        train_shots = shots
        if self.cfg.style_mix:
            mixed = style_mixed_ws(self.G, shots.ws, self.cfg.style_mix, seed=1000 + head_seed)
            train_shots = Shots(torch.cat([shots.ws, mixed]), shots.masks.repeat(self.cfg.style_mix + 1, 1, 1),
                                self.names)
        t0 = time.perf_counter()
        head = train_head(self.G, train_shots, HeadTrainConfig(kind=self.cfg.head_kind, steps=steps, batch=batch,
                                                               seed=head_seed), progress=False)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            fit = head_probs(head, shot_features(self.G, shots))[0].argmax(1).numpy()
            hws, _, hlab = self.heldout()
            pred = np.concatenate([head_probs(head, self.G.synthesize_features(w=hws[i: i + 25])[1])[0]
                                   .argmax(1).numpy() for i in range(0, len(hws), 25)])
        info = {"seeds": list(seeds), "head_seed": head_seed, "steps": steps, "batch": batch,
                "style_mix": self.cfg.style_mix, "seconds": round(seconds, 1),
                "fit": sr("", k, fit, masks, self.names),
                "heldout_generated": sr("", k, pred, hlab, self.names)}
        save_head(head, path, extra={"class_names": self.names})
        _write_json(info_path, info)
        print(f"head {tag}: {steps} steps, fits its shots {info['fit']['miou']:.3f}, "
              f"held-out generated vs annotator {info['heldout_generated']['miou']:.3f}")
        return head

    # -- students -------------------------------------------------------------------------------
    def unet(self, name: str, data, val: float = 0.0) -> Path:
        from ganseg.training.train_unet import UNetTrainConfig, UNetTrainer

        run = self.out / f"unet_{name}"
        state = run / "unet.json"
        if state.is_file() and json.loads(state.read_text())["step"] >= self.cfg.unet_steps:
            return run
        tcfg = UNetTrainConfig(width=self.cfg.unet_width, steps=self.cfg.unet_steps, batch=self.cfg.unet_batch,
                               val_fraction=val)
        trainer = UNetTrainer(tcfg, data, run)
        if trainer.state_path.is_file():
            trainer.load()
        print(f"unet_{name}: {len(trainer.train_data)} train images, from step {trainer.step}", flush=True)
        trainer.train(progress=False)
        if trainer.step < self.cfg.unet_steps:  # stopped by a signal: checkpointed, do not go on
            raise SystemExit(f"unet_{name} stopped at step {trainer.step}; rerun the same command to resume")
        return run

    def labelled(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, source: str):
        from ganseg.training.train_unet import LabelledData

        return LabelledData(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels)),
                            np.asarray(ids, np.int64), self.names, source=source)

    def with_shots(self, images: np.ndarray, labels: np.ndarray, seeds: tuple[int, ...], source: str):
        """Distillation set + the annotated shots repeated to `shot_share` of the samples: the exact
        labels the person painted stay in the student's diet instead of only their head's echo."""
        _, simg, smask = self.shots(seeds)
        reps = math.ceil(self.cfg.shot_share * len(images) / (1 - self.cfg.shot_share) / len(seeds)) \
            if self.cfg.shot_share > 0 else 0
        ids = np.arange(len(images) + reps * len(seeds))
        return self.labelled(np.concatenate([images] + [simg] * reps), np.concatenate([labels] + [smask] * reps),
                             ids, source + (f" + {len(seeds)} annotated shots x{reps}" if reps else ""))

    def synth(self, tag: str, head) -> Path:
        from ganseg.synthesize import SynthConfig, read_manifest, synthesize_dataset

        data = self.out / f"synth_{tag}"
        cfg = SynthConfig(n=self.cfg.synth_n, truncation=self.cfg.truncation, class_names=self.names)
        t0 = time.perf_counter()
        synthesize_dataset(self.G, head, cfg, data, progress=False)
        m = read_manifest(data)
        if len(m["shards"]) == m["num_shards"] and not (data / "timing.json").is_file():
            write_atomic(data / "timing.json", json.dumps({"seconds": time.perf_counter() - t0,
                                                           "threads": torch.get_num_threads()}).encode())
        return data

    def auto(self, tag: str, seeds: tuple[int, ...], head_seed: int, plain: bool = False) -> None:
        """head -> synthesized set -> student (+ shots) -> self-training rounds; `plain`: the ablation
        without shots and self-training (head labels only)."""
        from ganseg.synthesize import load_synth_dataset
        from ganseg.unet import load_unet, segment_with_unet

        head = self.head(tag, seeds, head_seed)
        ds = load_synth_dataset(self.synth(tag, head), soft=False)
        if plain:
            self.score_unet(self.unet(f"a0_{tag}", self.labelled(ds.images, ds.labels, ds.seeds, f"synth_{tag}")))
            return
        run = self.unet(f"a1_{tag}", self.with_shots(ds.images, ds.labels, seeds, f"synth_{tag} (head labels)"))
        self.score_unet(run)
        for r in range(self.cfg.self_train):
            relabel = segment_with_unet(load_unet(run), ds.images)
            run = self.unet(f"a{r + 2}_{tag}", self.with_shots(ds.images, relabel, seeds,
                                                               f"synth_{tag} relabelled by round {r + 1}'s student"))
            self.score_unet(run)

    def weighted_head(self, k: int, only: str = "") -> None:
        """Ablation: a head of the row (the first, or the one tagged `only`) trained with class-weighted
        cross-entropy, same student."""
        from ganseg.synthesize import load_synth_dataset
        from ganseg.headfit import HeadTrainConfig, train_head
        from ganseg.heads import load_head, save_head

        sets = shot_sets(k, self.cfg.head_seeds)
        picked = [s for s in sets if s[0] == only] if only else sets[:1]
        if not picked:
            raise SystemExit(f"whead{k}:{only}: no such shot set; use one of {', '.join(s[0] for s in sets)}")
        tag, seeds, hs = picked[0]
        path = self.out / f"head_{tag}w.safetensors"
        if not path.is_file():
            shots, _, _ = self.shots(seeds)
            batch = min(2, len(seeds))
            head = train_head(self.G, shots, HeadTrainConfig(kind=self.cfg.head_kind, steps=self.cfg.head_steps,
                                                             batch=batch, seed=hs, class_weighting="sqrt-inverse"),
                              progress=False)
            save_head(head, path, extra={"class_names": self.names})
        ds = load_synth_dataset(self.synth(f"{tag}w", load_head(path)), soft=False)
        self.score_unet(self.unet(f"a1w_{tag}", self.with_shots(ds.images, ds.labels, seeds,
                                                                f"synth_{tag}w (class-weighted head)")))

    def style_mix_head(self, k: int, copies: int = 20) -> None:
        """Ablation (shot augmentation): the row's first head trained on the shots plus `copies`
        style-mixed variants of each (fine layers from random latents: same layout, same masks)."""
        from ganseg.heads import load_head, save_head
        from ganseg.shots import Shots
        from ganseg.synthesize import load_synth_dataset
        from ganseg.training.annotator import style_mixed_ws
        from ganseg.headfit import HeadTrainConfig, train_head

        tag, seeds, hs = shot_sets(k, self.cfg.head_seeds)[0]
        path = self.out / f"head_{tag}m.safetensors"
        if not path.is_file():
            shots, _, _ = self.shots(seeds)
            mixed = style_mixed_ws(self.G, shots.ws, copies, seed=1000 + hs)
            train = Shots(torch.cat([shots.ws, mixed]), shots.masks.repeat(copies + 1, 1, 1), self.names)
            batch = min(2, len(seeds))
            # the plain head's step count (views per *shot*, not per copy): same cost, more variety
            steps = self.head_steps(len(seeds), batch)
            head = train_head(self.G, train, HeadTrainConfig(kind=self.cfg.head_kind, batch=batch, seed=hs,
                                                             steps=steps), progress=False)
            save_head(head, path, extra={"class_names": self.names})
        ds = load_synth_dataset(self.synth(f"{tag}m", load_head(path)), soft=False)
        self.score_unet(self.unet(f"a1m_{tag}", self.with_shots(ds.images, ds.labels, seeds,
                                                                f"synth_{tag}m (style-mixed shots for the head)")))

    def ensemble(self, k: int) -> None:
        """The row's heads averaged (HeadEnsemble) as one teacher: the same student recipe."""
        from ganseg.heads import HeadEnsemble
        from ganseg.synthesize import load_synth_dataset

        sets = shot_sets(k, self.cfg.head_seeds)
        head = HeadEnsemble([self.head(t, s, h) for t, s, h in sets]).eval()
        ds = load_synth_dataset(self.synth(f"k{k}_ens", head), soft=False)
        self.score_unet(self.unet(f"a1_k{k}_ens", self.with_shots(ds.images, ds.labels, sets[0][1],
                                                                  f"synth_k{k}_ens (ensemble labels)")))

    def suggest(self, pool: int = SUGGEST_POOL) -> None:
        """What `ganseg annotate`'s Suggest next is worth: after the first shot (seed 0), the proposal
        ensemble (annotate's own recipe, `ProposeConfig`) ranks generated seeds 1..pool-1 by mean
        uncertainty; the top one becomes the second shot. Its 2-shot auto-shot UNet (and pixel
        baseline) is compared with the 2-shot set of the lowest other seed (what a person taking the
        images in order would annotate next)."""
        from ganseg.annotate.propose import ProposeConfig, propose_batch, proposal_head_config
        from ganseg.headfit import train_head
        from ganseg.training.annotator import annotate_generated

        path = self.out / "suggest.json"
        if not path.is_file():
            first, _, _ = self.shots((0,))
            pcfg = ProposeConfig()
            head = train_head(self.G, first, proposal_head_config(pcfg), progress=False)
            ws, _, _ = annotate_generated(self.G, self.annotator, range(1, pool), truncation_psi=self.cfg.truncation)
            log_k = math.log(len(self.names))
            scores = [float(un.mean()) for i in range(0, len(ws), 8)
                      for _, un in propose_batch(self.G, head, ws[i: i + 8], first.noise_mode, log_k)]
            pick = 1 + int(np.argmax(scores))
            _write_json(path, {"pool": list(range(1, pool)), "scores": scores, "pick": pick,
                               "in_order": 1 if pick != 1 else 2, "proposal": asdict(pcfg)})
        doc = json.loads(path.read_text())
        for tag, seeds in ((f"k2sg{doc['pick']}", (0, doc["pick"])), (f"k2s{doc['in_order']}", (0, doc["in_order"]))):
            self.auto(tag, seeds, 0)
            self.genshots(tag, seeds)

    def link_other_kind(self, other: Path) -> None:
        """Bring the students and head records of a working folder made with another --head-kind (same
        other settings) in as ablation rows: hard links `unet_a1{kind}_TAG`, `head_TAG_{kind}.json`."""
        theirs = json.loads((other / "settings.json").read_text())
        kind = theirs["head_kind"]
        diff = [k for k, v in theirs.items() if k != "head_kind" and asdict(self.cfg).get(k) != v and k != "n_test_unet"]
        if kind == self.cfg.head_kind or diff:
            raise SystemExit(f"{other}: made with head kind {kind!r} and other settings ({', '.join(diff) or 'none'}); "
                             f"link needs another head kind and the same settings")
        for run in sorted(other.glob("unet_a1_*")):
            dst = self.out / f"unet_a1{kind}_{run.name[len('unet_a1_'):]}"
            if not dst.exists():
                shutil.copytree(run, dst, copy_function=os.link)
        for info in sorted(other.glob("head_*.json")):
            dst = self.out / f"{info.stem}_{kind}.json"
            if not dst.exists():
                os.link(info, dst)

    def genshots(self, tag: str, seeds: tuple[int, ...]) -> None:
        """The pixel baseline: a UNet on the K annotated generated images alone."""
        _, img, masks = self.shots(seeds)
        self.score_unet(self.unet(f"g_{tag}", self.labelled(img, masks, np.array(seeds), f"annotated shots {tag}")))

    def oracle(self) -> None:
        """Same generated images as the synthesized sets (seeds 0..synth_n-1), painted by the annotator."""
        from ganseg.training.annotator import annotate_generated

        run = self.out / "unet_oracle"
        if not (run / "unet.json").is_file() or json.loads((run / "unet.json").read_text())["step"] < self.cfg.unet_steps:
            _, img, masks = annotate_generated(self.G, self.annotator, range(self.cfg.synth_n), truncation_psi=self.cfg.truncation)
            self.unet("oracle", self.labelled(img, masks, np.arange(self.cfg.synth_n), "generated, annotator's masks"))
        self.score_unet(run)

    def real(self, n: int) -> None:
        img, lab = render_faces(split_seeds("train", n), resolution=self.G.resolution)
        self.score_unet(self.unet(f"real_n{n}", self.labelled(img, lab, np.arange(n), f"rendered train seeds 0..{n - 1}")))

    # -- protocol "inverted": real photos as shots, inverted into the GAN -----------------------
    def inversion(self, name: str, images: np.ndarray):
        from ganseg.checkpoints import default_discriminator_for, load_discriminator
        from ganseg.invert import InvertConfig, invert, load_inversion, save_inversion

        path = self.out / f"inversion_{name}.safetensors"
        if path.is_file():
            return load_inversion(path)
        D = load_discriminator(self.cfg.discriminator or default_discriminator_for(self.cfg.ckpt or None))
        inv = invert(self.G, from_uint8(images), InvertConfig(steps=self.cfg.invert_steps), D)
        save_inversion(inv, path)
        return inv

    def inv_heads(self) -> None:
        from ganseg.evaluate import predict_from_inversion
        from ganseg.heads import save_head
        from ganseg.shots import Shots
        from ganseg.headfit import HeadTrainConfig, train_head

        rows_path = self.out / "invert_rows.json"
        if rows_path.is_file():
            return
        shot_img, shot_lab = render_faces(split_seeds("train", max(SHOTS)), resolution=self.G.resolution)
        shot_inv = self.inversion("shots", shot_img)
        test_img, test_lab = self.test_set()
        test_inv = self.inversion("test", test_img[: self.cfg.n_test])
        rows = []
        for k in SHOTS:
            shots = Shots(shot_inv.ws[:k], torch.from_numpy(shot_lab[:k]).long(), self.names,
                          noise=[n[:k] for n in shot_inv.noise])
            batch = min(2, k)
            steps = self.head_steps(k, batch)
            head = train_head(self.G, shots, HeadTrainConfig(kind=self.cfg.head_kind, steps=steps, batch=batch,
                                                             seed=k), progress=False)
            save_head(head, self.out / f"head_inv_k{k}.safetensors", extra={"class_names": self.names})
            pred = predict_from_inversion(self.G, head, test_inv).numpy().astype(np.uint8)
            _save_npy(self.out / "preds" / f"invert_k{k}.npy", pred)
            rows.append(score_row(f"invert+{self.cfg.head_kind}", k, pred, test_lab[: self.cfg.n_test], self.names,
                                  family="invert", protocol="inverted"))
            print(f"invert+{self.cfg.head_kind} {k}-shot: mIoU {rows[-1]['miou']:.3f}")
        _write_json(rows_path, {"rows": rows, "psnr_test_mean": float(test_inv.psnr.mean()),
                                "psnr_shots_mean": float(shot_inv.psnr.mean())})

    def inv_auto(self, k: int) -> None:
        from ganseg.heads import load_head
        from ganseg.synthesize import load_synth_dataset

        head_path = self.out / f"head_inv_k{k}.safetensors"
        if not head_path.is_file():
            self.inv_heads()
        ds = load_synth_dataset(self.synth(f"inv_k{k}", load_head(head_path)), soft=False)
        self.score_unet(self.unet(f"inv_k{k}", self.labelled(ds.images, ds.labels, ds.seeds, f"synth_inv_k{k}")))

    # -- the table ------------------------------------------------------------------------------
    def _row(self, method: str, k: int, family: str, protocol: str, runs: list[Path], **extra) -> dict | None:
        """Mean over the runs that finished (per-run figures kept); None when none did."""
        scores = [self.score_unet(r) for r in runs if (r / "unet.safetensors").is_file()
                  and json.loads((r / "unet.json").read_text())["step"] >= self.cfg.unet_steps]
        if not scores:
            return None
        return self._mean_row(method, k, family, protocol, scores, runs=[r.name for r in runs][:len(scores)], **extra)

    def _mean_row(self, method, k, family, protocol, scores, **extra) -> dict:
        mean = lambda key: float(np.mean([s[key]["miou"] for s in scores if key in s]))  # noqa: E731
        row = {"method": method, "shots": k, "protocol": protocol, "family": family,
               "miou": mean("test"), "miou_1000": mean("test_large"),
               "iou": {n: float(np.mean([s["test"]["iou"][n] for s in scores])) for n in self.names},
               "iou_1000": {n: float(np.mean([s["test_large"]["iou"][n] for s in scores])) for n in self.names},
               "n_runs": len(scores), "miou_runs": [round(s["test"]["miou"], 4) for s in scores],
               "miou_1000_runs": [round(s["test_large"]["miou"], 4) for s in scores]}
        if all("heldout_generated" in s for s in scores):
            row["miou_heldout_generated"] = float(np.mean([s["heldout_generated"]["miou"] for s in scores]))
        row.update(extra)
        return row

    def table(self) -> dict:
        names = self.names
        test_img, test_lab = self.test_set()
        rows, preds = [], {}
        ann = self.annotator_job()
        for k in SHOTS:
            rows.append(self._mean_row("annotator", k, "annotator", "generated", [ann],
                                       about="simulated annotator (quality-probe UNet, 3 000 rendered faces) on rendered test"))
            oracle = self._row("oracle", k, "oracle", "generated", [self.out / "unet_oracle"],
                               about=f"UNet on {self.cfg.synth_n} generated images painted by the annotator")
            if oracle:
                rows.append(oracle)
        for k in SHOTS:
            sets = shot_sets(k, self.cfg.head_seeds)
            heads = [json.loads((self.out / f"head_{t}.json").read_text()) for t, _, _ in sets
                     if (self.out / f"head_{t}.json").is_file()]
            ladder = head_ladder(heads)
            final = f"a{self.cfg.self_train + 1}"
            variants = [(final, AUTO_METHOD, "auto"),
                        ("a0", "auto-shot UNet, head labels only (no annotated shots in its data)", "ablation"),
                        ("a1s10", "auto-shot UNet, annotated shots 10 % of its data", "ablation"),
                        ("a2s10", "auto-shot UNet, shots 10 %, + one self-training round", "ablation"),
                        ("a1", "auto-shot UNet without self-training", "ablation"),
                        ("a2", "auto-shot UNet + one self-training round", "ablation"),
                        ("a1w", "auto-shot UNet, class-weighted head loss", "ablation"),
                        ("a1m", "auto-shot UNet, head on the shots + 20 style-mixed copies each", "ablation")]
            for prefix, method, family in variants:
                if family == "ablation" and prefix == final:
                    continue
                row = self._row(method, k, family, "generated", [self.out / f"unet_{prefix}_{t}" for t, _, _ in sets],
                                **ladder)
                if row:
                    rows.append(row)
            # another head kind's students (`--jobs link:DIR`, DIR a working folder of that --head-kind,
            # e.g. the CNN head that was the recipe's until 2026-12-05), with their own heads' ladder
            for other in sorted({"linear", "mlp", "cnn"} - {self.cfg.head_kind}):
                oh = [json.loads((self.out / f"head_{t}_{other}.json").read_text()) for t, _, _ in sets
                      if (self.out / f"head_{t}_{other}.json").is_file()]
                row = self._row(f"auto-shot UNet, {other.upper() if other != 'linear' else other} head", k, "ablation",
                                "generated", [self.out / f"unet_a1{other}_{t}" for t, _, _ in sets], **head_ladder(oh))
                if row:
                    rows.append(row)
            ens = self._row("auto-shot UNet, teacher = ensemble of the heads, shots 10 %", k, "ablation", "generated",
                            [self.out / f"unet_a1s10_k{k}_ens"])
            if ens:
                rows.append(ens)
            gsets = sorted({(t.split("_h")[0], s) for t, s, _ in sets})
            row = self._row(GENSHOT_METHOD, k, "genshots", "generated", [self.out / f"unet_g_{t}" for t, _ in gsets])
            if row:
                rows.append(row)
        if (self.out / "suggest.json").is_file():  # job suggest: the second shot by Suggest next vs in order
            doc = json.loads((self.out / "suggest.json").read_text())
            final = f"a{self.cfg.self_train + 1}"
            for kind, tag, what in (("suggest", f"k2sg{doc['pick']}", f"Suggest next's pick (seed {doc['pick']})"),
                                    ("order", f"k2s{doc['in_order']}", f"seed {doc['in_order']} (in order)")):
                for prefix, method, fam in ((final, AUTO_METHOD, "auto"), ("g", GENSHOT_METHOD, "genshots")):
                    row = self._row(f"{method}, 2 shots: seed 0 + {what}", 2, f"{kind}-{fam}", "generated",
                                    [self.out / f"unet_{prefix}_{tag}"])
                    if row:
                        rows.append(row)
        for n in REAL_N:
            row = self._row("supervised UNet", n, "real", "generated", [self.out / f"unet_real_n{n}"],
                            about=f"{n} rendered train photos with exact masks")
            if row:
                rows.append(row)
        inv_doc = {}
        if (self.out / "invert_rows.json").is_file():
            inv_doc = json.loads((self.out / "invert_rows.json").read_text())
            rows += inv_doc["rows"]
        for k in SHOTS:
            row = self._row("auto-shot UNet (real photos as shots, inverted)", k, "invauto", "inverted",
                            [self.out / f"unet_inv_k{k}"])
            if row:
                rows.append(row)
        by = {(r["family"], r["shots"]): r for r in rows}
        goals = self.goals(by)
        timing = {p.parent.name: json.loads(p.read_text()) for p in sorted(self.out.glob("synth_*/timing.json"))}
        results = {"environment": environment(), "config": asdict(self.cfg), "resolution": self.G.resolution,
                   "classes": names, "protocols": {
                       "generated": "shots are generated images (seeds 0..K-1, psi 1) painted by the simulated annotator",
                       "inverted": "shots are rendered photos with exact masks, inverted into the GAN"},
                   "psnr_test_mean": inv_doc.get("psnr_test_mean"), "psnr_shots_mean": inv_doc.get("psnr_shots_mean"),
                   "rows": rows, "goals": goals, "synthesis_timing": timing}
        self.results.mkdir(parents=True, exist_ok=True)
        write_json(self.results / "autoshot_eval.json", results)
        md = self.markdown(results)
        write_text(self.results / "autoshot_eval.md", md)
        for k in SHOTS:
            r = by.get(("auto", k))
            if r and r.get("runs"):
                preds[f"{AUTO_METHOD} {k}"] = np.load(self.out / r["runs"][0] / "pred_test.npy")
        for fam, label in (("genshots", GENSHOT_METHOD), ("oracle", "oracle"), ("real", "supervised UNet")):
            r = by.get((fam, 10))
            if r and r.get("runs"):
                preds[f"{label} {10}"] = np.load(self.out / r["runs"][0] / "pred_test.npy")
        if (self.out / "preds" / "annotator.npy").is_file():
            preds = {"annotator": np.load(self.out / "preds" / "annotator.npy")} | preds
        show = min(8, self.cfg.n_test)
        self.figures(test_img[:show], test_lab[:show], {k: v[:show] for k, v in preds.items()}, rows)
        print(md)
        return results

    def goals(self, by: dict) -> dict:
        """The issue's goals, met or not, from the 10-shot rows (None where a row is missing)."""
        a10, g10, s10, s1000 = (by.get(("auto", 10)), by.get(("genshots", 10)), by.get(("real", 10)),
                                by.get(("real", 1000)))
        a1 = by.get(("auto", 1))
        out = {}
        if a10 and g10:
            out["auto10_minus_genshots10"] = {"value": a10["miou_1000"] - g10["miou_1000"], "goal": ">= 0.05",
                                              "value_50": a10["miou"] - g10["miou"],
                                              "met": a10["miou_1000"] - g10["miou_1000"] >= 0.05}
        if a10 and s10:
            out["auto10_vs_supervised10"] = {"value": a10["miou_1000"], "goal": f">= {s10['miou_1000']:.3f}",
                                             "met": a10["miou_1000"] >= s10["miou_1000"]}
        if a10 and s1000:
            ratio = a10["miou_1000"] / s1000["miou_1000"]
            out["auto10_over_supervised1000"] = {"value": ratio, "goal": ">= 0.90", "met": ratio >= 0.9}
        if a1:
            out["auto1_mean"] = {"value": a1["miou_1000"], "goal": ">= 0.45", "met": a1["miou_1000"] >= 0.45}
        if a10:
            low = min(a10["iou_1000"].items(), key=lambda kv: kv[1])
            out["auto10_lowest_class"] = {"value": low[1], "class": low[0], "goal": ">= 0.25", "met": low[1] >= 0.25}
        return out

    def markdown(self, results: dict) -> str:
        names, cfg = results["classes"], self.cfg
        md = (f"Protocol **generated** (ReGAN's): shots are generated images painted by the simulated annotator; "
              f"**inverted**: rendered photos as shots, inverted into the GAN. mIoU on {cfg.n_test} / "
              f"{cfg.n_test_unet} rendered test images; runs = heads (shots for 1-shot) averaged.\n\n")
        md += "| protocol | method | shots / N | runs | mIoU | mIoU, 1000 | vs annotator, generated | " \
              + " | ".join(names) + " |\n|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(names) + "\n"
        f3 = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        for r in results["rows"]:
            iou = r.get("iou_1000", r["iou"])
            md += (f"| {r.get('protocol', '')} | {r['method']} | {r['shots']} | {r.get('n_runs', 1)} | {r['miou']:.3f} | "
                   f"{f3(r.get('miou_1000'))} | {f3(r.get('miou_heldout_generated'))} | "
                   + " | ".join(f"{iou[n]:.2f}" for n in names) + " |\n")
        md += "\nLoss ladder (protocol generated, mIoU): annotator on rendered test → oracle → head vs annotator " \
              "(held-out generated) → auto-shot UNet vs annotator (held-out generated) → auto-shot UNet on rendered test\n\n"
        md += "| shots | annotator | oracle | head fits its shots | head, generated | student, generated | student, rendered | pixel baseline (same shots) |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        by = {(r["family"], r["shots"]): r for r in results["rows"]}
        for k in SHOTS:
            a, o, s, g = by.get(("annotator", k)), by.get(("oracle", k)), by.get(("auto", k)), by.get(("genshots", k))
            md += (f"| {k} | {f3(a and a['miou_1000'])} | {f3(o and o['miou_1000'])} | {f3(s and s.get('head_fit'))} | "
                   f"{f3(s and s.get('head_vs_annotator_heldout'))} | {f3(s and s.get('miou_heldout_generated'))} | "
                   f"{f3(s and s['miou_1000'])} | {f3(g and g['miou_1000'])} |\n")
        sg, so = by.get(("suggest-auto", 2)), by.get(("order-auto", 2))
        if sg and so:
            md += (f"\nSuggest next (`ganseg annotate`), 2 shots: auto-shot UNet {sg['miou_1000']:.3f} with the suggested "
                   f"second shot vs {so['miou_1000']:.3f} with the next seed in order ({sg['method'].split(': ')[1]} vs "
                   f"{so['method'].split(': ')[1]}; first shot seed 0).\n")
        md += "\nGoals (1000 rendered test images):\n\n" + "".join(
            f"- {k}: {v['value']:.3f} (goal {v['goal']}{', ' + v['class'] if 'class' in v else ''}) — "
            f"{'met' if v['met'] else 'NOT met'}\n" for k, v in results["goals"].items())
        return md

    def figures(self, img: np.ndarray, lab: np.ndarray, preds: dict[str, np.ndarray], rows: list[dict]) -> None:
        plt = pyplot()
        panels = [img, overlay(img, lab, PALETTE)] + [overlay(img, p, PALETTE) for p in preds.values()]
        save_png(self.results / "autoshot_overlays.png", make_grid(np.concatenate(panels), ncols=len(img)))
        write_text(self.results / "autoshot_overlays.txt",
                   "rows, top to bottom: test image, ground truth, " + ", ".join(preds) + "\n")
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for family, label, marker in (("auto", "auto-shot UNet (k generated shots)", "s"),
                                      ("genshots", "UNet on the k generated shots (pixels only)", "v"),
                                      ("invauto", "auto-shot UNet, inverted photos as shots", "o"),
                                      ("real", "supervised UNet (N rendered photos)", "^")):
            pts = sorted((r["shots"], r["miou_1000"]) for r in rows if r.get("family") == family and "miou_1000" in r)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=label)
        for family, style in (("annotator", "--"), ("oracle", ":")):
            v = [r["miou_1000"] for r in rows if r.get("family") == family]
            if v:
                ax.axhline(v[0], color="grey", ls=style, lw=1, label=family)
        ax.set_xscale("log")
        ax.set_xlabel("annotated images (k shots or N)")
        ax.set_ylabel(f"mIoU, {self.cfg.n_test_unet} rendered test images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, self.results / "autoshot_miou.png")


def expand_jobs(jobs: list[str], cfg: AutoshotEvalConfig) -> list[str]:
    if jobs == ["all"]:
        return (["annotator", "heads"] + [f"auto{k}" for k in SHOTS] + ["oracle", "genshots"]
                + [f"real{n}" for n in REAL_N] + ["inv-heads", "inv-auto10", "table"])
    return jobs


def main() -> None:
    d = AutoshotEvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", default="all",
                   help="comma list of annotator, heads, autoK, autoK:TAG, plainK, ensK, wheadK[:TAG], mixK, genshots, genshotsK, "
                        "oracle, realN, inv-heads, inv-autoK, suggest, link:DIR, table, or all")
    p.add_argument("--out", default="runs/autoshot", help="working folder (heads, datasets, UNets)")
    p.add_argument("--results", default=str(RESULTS), help="where the table and figures go")
    for f, v in asdict(d).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    args = p.parse_args()
    cfg = AutoshotEvalConfig(**{f: getattr(args, f) for f in asdict(d)})
    r = Runner(cfg, Path(args.out), Path(args.results))
    for job in expand_jobs(args.jobs.split(","), cfg):
        t0 = time.perf_counter()
        if job == "annotator":
            r.annotator_job()
        elif job == "heads":
            for k in SHOTS:
                for tag, seeds, hs in shot_sets(k, cfg.head_seeds):
                    r.head(tag, seeds, hs)
        elif job == "table":
            r.table()
        elif job == "oracle":
            r.oracle()
        elif job.startswith("genshots"):
            ks, _, only = job[8:].partition(":")
            for k in ([int(ks)] if ks else SHOTS):
                for tag, seeds in sorted({(t.split("_h")[0], s) for t, s, _ in shot_sets(k, cfg.head_seeds)}):
                    if not only or only == tag:
                        r.genshots(tag, seeds)
        elif job.startswith("link:"):
            r.link_other_kind(Path(job[5:]))
        elif job == "suggest":
            r.suggest()
        elif job.startswith("mix"):
            r.style_mix_head(int(job[3:]))
        elif job.startswith("whead"):
            ks, _, only = job[5:].partition(":")
            r.weighted_head(int(ks), only)
        elif job.startswith("ens"):
            r.ensemble(int(job[3:]))
        elif job.startswith("plain"):
            k = int(job[5:])
            tag, seeds, hs = shot_sets(k, cfg.head_seeds)[0]
            r.auto(tag, seeds, hs, plain=True)
        elif job.startswith("auto"):
            k, _, only = job[4:].partition(":")
            for tag, seeds, hs in shot_sets(int(k), cfg.head_seeds):
                if not only or only == tag:
                    r.auto(tag, seeds, hs)
        elif job.startswith("real"):
            r.real(int(job[4:]))
        elif job == "inv-heads":
            r.inv_heads()
        elif job.startswith("inv-auto"):
            r.inv_auto(int(job[8:]))
        else:
            raise SystemExit(f"unknown job {job!r}")
        print(f"[{job}] done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
