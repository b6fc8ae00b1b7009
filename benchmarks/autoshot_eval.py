"""Auto-shot against the alternatives on the held-out rendered test split (one table).

For k = 1, 5, 10 shots (train seeds 0..k-1, rendered with exact masks, inverted into the GAN):
  (a) invert+cnn   the paper's CNN head on the shots; each test image is inverted and segmented
                   from its inversion's features;
  (b) auto-shot    the same head labels `--synth-n` generated images (`ganseg synthesize`), and a
                   UNet distilled from them segments the test images directly, no GAN;
  (c) supervised   the same UNet recipe trained on N rendered *train* images with their exact masks,
                   N = 10, 100, 1000 (N = 10 are the 10 shots themselves).
Every row is scored on the same first `--n-test` test images (per-class IoU over all pixels, mIoU);
UNets are also scored on `--n-test-unet` test images (cheap without inversion) as a check of noise.

Jobs are idempotent and resumable (finished ones are skipped, UNets resume from their checkpoint),
so two processes can share the work on a 2-core machine, e.g.

    OMP_NUM_THREADS=1 python benchmarks/autoshot_eval.py --jobs heads,synth1,synth5,synth10,auto5,auto10 &
    OMP_NUM_THREADS=1 python benchmarks/autoshot_eval.py --jobs real1000,real100,real10,auto1 &
    wait; python benchmarks/autoshot_eval.py --jobs table

    -> benchmarks/results/autoshot_eval.{json,md}, autoshot_overlays.png, autoshot_miou.png
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ganseg.evaluate import markdown_table, score_row
from ganseg.faces import render_faces, split_seeds
from ganseg.labels import CLASS_NAMES, PALETTE
from ganseg.images import from_uint8, make_grid, overlay, save_png, write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, pyplot, save_figure, write_json, write_text  # noqa: E402
SHOTS = (1, 5, 10)
REAL_N = (10, 100, 1000)
# recipe variants of the auto-shot student (job `autoK:NAME`), each against the base recipe
VARIANTS = {
    "psi07": {"truncation": 0.7, "about": "images at truncation 0.7"},
    "keep70": {"keep": 0.7, "about": "70 % most confident images (head entropy)"},
    "soft": {"soft_topk": 3, "about": "soft targets (head's top-3 probabilities)"},
}


@dataclass
class AutoshotEvalConfig:
    n_test: int = 50            # images every method is scored on (inversion is the slow part)
    n_test_unet: int = 1000     # larger test set for the UNets alone
    invert_steps: int = 200
    head_kind: str = "cnn"
    head_steps: int = 600
    synth_n: int = 3000
    truncation: float = 1.0
    unet_width: int = 16
    unet_steps: int = 2000
    unet_batch: int = 16
    ckpt: str = ""              # generator file; "" = the bundled default
    discriminator: str = ""     # ganseg discriminator for the inversion's perceptual term; "" = the
                                # bundled one with the bundled generator, none otherwise


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    write_atomic(path, buf.getvalue())


class Runner:
    def __init__(self, cfg: AutoshotEvalConfig, out: Path, results: Path = RESULTS):
        from ganseg.checkpoints import load_generator

        self.cfg, self.out, self.results = cfg, out, results
        self.G = load_generator(cfg.ckpt or None).eval().requires_grad_(False)
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
            write_atomic(stamp, (json.dumps(ident, indent=1) + "\n").encode())

    # -- shared inputs ------------------------------------------------------------------------
    def test_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return render_faces(split_seeds("test", n), resolution=self.G.resolution)

    def inversion(self, name: str, images: np.ndarray):
        from ganseg.invert import (InvertConfig, default_discriminator_for, invert, load_discriminator,
                                   load_inversion, save_inversion)

        path = self.out / f"inversion_{name}.safetensors"
        if path.is_file():
            return load_inversion(path)
        D = load_discriminator(self.cfg.discriminator or default_discriminator_for(self.cfg.ckpt or None))
        inv = invert(self.G, from_uint8(images), InvertConfig(steps=self.cfg.invert_steps), D)
        save_inversion(inv, path)
        return inv

    # -- (a) heads on inverted shots, scored through test inversions ---------------------------
    def heads(self) -> None:
        from ganseg.evaluate import predict_from_inversion
        from ganseg.heads import save_head
        from ganseg.shots import Shots
        from ganseg.training.train_head import HeadTrainConfig, train_head

        rows_path = self.out / "invert_rows.json"
        if rows_path.is_file():
            return
        shot_img, shot_lab = render_faces(split_seeds("train", max(SHOTS)), resolution=self.G.resolution)
        shot_inv = self.inversion("shots", shot_img)
        test_img, test_lab = self.test_set(self.cfg.n_test)
        test_inv = self.inversion("test", test_img)
        rows = []
        for k in SHOTS:
            torch.manual_seed(k)  # the head's init and shot order: reproducible per k
            shots = Shots(shot_inv.ws[:k], torch.from_numpy(shot_lab[:k]).long(), list(CLASS_NAMES),
                          noise=[n[:k] for n in shot_inv.noise])
            head = train_head(self.G, shots, HeadTrainConfig(kind=self.cfg.head_kind, steps=self.cfg.head_steps))
            save_head(head, self.out / f"head_k{k}.safetensors", extra={"class_names": list(CLASS_NAMES)})
            pred = predict_from_inversion(self.G, head, test_inv).numpy().astype(np.uint8)
            _save_npy(self.out / "preds" / f"invert_k{k}.npy", pred)
            rows.append(score_row(f"invert+{self.cfg.head_kind}", k, pred, test_lab, list(CLASS_NAMES),
                                  family="invert"))
            print(f"invert+{self.cfg.head_kind} {k}-shot: mIoU {rows[-1]['miou']:.3f}")
        doc = {"rows": rows, "psnr_test_mean": float(test_inv.psnr.mean()),
               "psnr_shots_mean": float(shot_inv.psnr.mean())}
        write_atomic(rows_path, (json.dumps(doc, indent=1) + "\n").encode())

    # -- (b) auto-shot dataset and its UNet -----------------------------------------------------
    def synth_dir(self, k: int, variant: str | None = None) -> Path:
        v = VARIANTS.get(variant, {})
        tag = f"_{variant}" if ("truncation" in v or "soft_topk" in v) else ""  # variants that change the data
        return self.out / f"synth_k{k}{tag}"

    def synth(self, k: int, variant: str | None = None) -> Path:
        from ganseg.heads import load_head
        from ganseg.synthesize import SynthConfig, read_manifest, synthesize_dataset

        head_path = self.out / f"head_k{k}.safetensors"
        if not head_path.is_file():
            self.heads()
        v = VARIANTS.get(variant, {})
        data = self.synth_dir(k, variant)
        cfg = SynthConfig(n=self.cfg.synth_n, truncation=v.get("truncation", self.cfg.truncation),
                          soft_topk=v.get("soft_topk", 0), class_names=list(CLASS_NAMES))
        t0 = time.perf_counter()
        synthesize_dataset(self.G, load_head(head_path), cfg, data)
        m = read_manifest(data)
        if len(m["shards"]) == m["num_shards"] and not (data / "timing.json").is_file():
            write_atomic(data / "timing.json", json.dumps({"seconds": time.perf_counter() - t0,
                                                           "threads": torch.get_num_threads()}).encode())
        return data

    def unet(self, name: str, data, soft: bool = False) -> Path:
        from ganseg.training.train_unet import UNetTrainConfig, UNetTrainer

        run = self.out / f"unet_{name}"
        state = run / "unet.json"
        if state.is_file() and json.loads(state.read_text())["step"] >= self.cfg.unet_steps:
            return run
        # synthesized data keeps a 5 % validation slice (agreement with the head's labels); real
        # sets train on all N images (the test split is separate)
        val = 0.05 if name.startswith("auto") else 0.0
        tcfg = UNetTrainConfig(width=self.cfg.unet_width, steps=self.cfg.unet_steps, batch=self.cfg.unet_batch,
                               val_fraction=val, soft=soft)
        trainer = UNetTrainer(tcfg, data, run)
        if trainer.state_path.is_file():
            trainer.load()
        print(f"unet_{name}: {len(trainer.train_data)} train / {len(trainer.val_data)} val images, "
              f"from step {trainer.step}")
        trainer.train()
        if trainer.step < self.cfg.unet_steps:  # stopped by a signal: checkpointed, do not go on
            raise SystemExit(f"unet_{name} stopped at step {trainer.step}; rerun the same command to resume")
        return run

    def auto(self, k: int, variant: str | None = None) -> None:
        from ganseg.synthesize import read_manifest
        from ganseg.training.train_unet import synth_data

        if variant is not None and variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        v = VARIANTS.get(variant, {})
        data = self.synth_dir(k, variant)
        if not (data / "timing.json").is_file():
            self.synth(k, variant)
        limit = None
        if "keep" in v:
            # the manifest lists every image's uncertainty: no need to read the shards twice
            unc = [u for e in read_manifest(data)["shards"] for u in e["uncertainty"]]
            limit = float(np.quantile(unc, v["keep"]))
        soft = "soft_topk" in v
        name = f"auto_k{k}" + (f"_{variant}" if variant else "")
        self.unet(name, synth_data(data, max_uncertainty=limit, soft=soft), soft=soft)

    # -- (c) supervised on N rendered train images ----------------------------------------------
    def real(self, n: int) -> None:
        from ganseg.training.train_unet import LabelledData

        img, lab = render_faces(split_seeds("train", n), resolution=self.G.resolution)
        data = LabelledData(torch.from_numpy(img), torch.from_numpy(lab), np.arange(n, dtype=np.int64),
                            list(CLASS_NAMES), source=f"rendered train seeds 0..{n - 1}")
        self.unet(f"real_n{n}", data)

    # -- the table ------------------------------------------------------------------------------
    def table(self) -> dict:
        from ganseg.unet import load_unet, segment_with_unet

        names = list(CLASS_NAMES)
        test_img, test_lab = self.test_set(max(self.cfg.n_test, self.cfg.n_test_unet))
        inv_doc = json.loads((self.out / "invert_rows.json").read_text())
        rows, preds = list(inv_doc["rows"]), {}
        for k in SHOTS:
            preds[f"invert+{self.cfg.head_kind} {k}"] = np.load(self.out / "preds" / f"invert_k{k}.npy")
        unets = [(f"auto_k{k}", "auto-shot UNet", k, "auto") for k in SHOTS] + \
                [(f"real_n{n}", "supervised UNet", n, "real") for n in REAL_N] + \
                [(f"auto_k{k}_{v}", f"auto-shot UNet, {VARIANTS[v]['about']}", k, "variant")
                 for k in SHOTS for v in VARIANTS]
        for name, method, k, family in unets:
            run = self.out / f"unet_{name}"
            if not (run / "unet.safetensors").is_file():
                if family != "variant":  # variants are optional
                    print(f"skipping {name}: not trained yet")
                continue
            unet = load_unet(run)
            pred = segment_with_unet(unet, test_img)
            big = score_row(method, k, pred, test_lab, names)
            row = score_row(method, k, pred[: self.cfg.n_test], test_lab[: self.cfg.n_test], names,
                            family=family,
                            miou_large_test=big["miou"], train_step=unet.meta.get("step"))
            rows.append(row)
            if row["family"] != "variant":
                preds[f"{method} {k}"] = pred[: self.cfg.n_test]
        sup = {r["shots"]: r["miou"] for r in rows if r.get("family") == "real"}
        auto = {r["shots"]: r["miou"] for r in rows if r.get("family") == "auto"}
        inv = {r["shots"]: r["miou"] for r in rows if r.get("family") == "invert"}
        goals = {}
        if 1000 in sup:
            goals = {f"auto_{k}shot_over_supervised1000": auto[k] / sup[1000] for k in auto}
        goals.update({f"auto_minus_invert_{k}shot": auto[k] - inv[k] for k in auto if k in inv})
        timing = {f"synth_k{k}": json.loads((self.out / f"synth_k{k}" / "timing.json").read_text())
                  for k in SHOTS if (self.out / f"synth_k{k}" / "timing.json").is_file()}
        results = {"environment": environment(), "config": asdict(self.cfg), "resolution": self.G.resolution,
                   "classes": names,
                   "psnr_test_mean": inv_doc["psnr_test_mean"], "psnr_shots_mean": inv_doc["psnr_shots_mean"],
                   "rows": rows, "ratios": goals, "synthesis_timing": timing}
        self.results.mkdir(parents=True, exist_ok=True)
        write_json(self.results / "autoshot_eval.json", results)
        md = markdown_table(results, shots_header="shots / N")
        md += "\n| method | shots / N | mIoU, " + f"{self.cfg.n_test} test images | mIoU, " \
              f"{self.cfg.n_test_unet} test images |\n|---|---:|---:|---:|\n"
        md += "".join(f"| {r['method']} | {r['shots']} | {r['miou']:.3f} | {r['miou_large_test']:.3f} |\n"
                      for r in rows if "miou_large_test" in r)
        md += "\n" + "".join(f"- {k}: {v:.3f}\n" for k, v in goals.items())
        write_text(self.results / "autoshot_eval.md", md)
        show = min(8, self.cfg.n_test)
        self.figures(test_img[:show], test_lab[:show], {k: v[:show] for k, v in preds.items()}, rows)
        print(md)
        return results

    def figures(self, img: np.ndarray, lab: np.ndarray, preds: dict[str, np.ndarray], rows: list[dict]) -> None:
        plt = pyplot()
        panels = [img, overlay(img, lab, PALETTE)] + [overlay(img, p, PALETTE) for p in preds.values()]
        save_png(self.results / "autoshot_overlays.png", make_grid(np.concatenate(panels), ncols=len(img)))
        write_text(self.results / "autoshot_overlays.txt",
                   "rows, top to bottom: test image, ground truth, " + ", ".join(preds) + "\n")
        # what the students learn from: generated images and the head's labels (k = most shots)
        k = max(SHOTS)
        if (self.out / f"synth_k{k}" / "timing.json").is_file():
            from ganseg.synthesize import load_synth_dataset

            ds = load_synth_dataset(self.out / f"synth_k{k}", soft=False)
            save_png(self.results / "autoshot_dataset.png",
                     make_grid(np.concatenate([ds.images[:16], overlay(ds.images[:16], ds.labels[:16], PALETTE)]),
                               ncols=16))
        fig, ax = plt.subplots(figsize=(7, 4))
        for family, label, marker in (("invert", f"invert+{self.cfg.head_kind} (k shots)", "o"),
                                      ("auto", "auto-shot UNet (k shots)", "s"),
                                      ("real", "supervised UNet (N real images)", "^")):
            pts = sorted((r["shots"], r["miou"]) for r in rows if r.get("family") == family)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=label)
        sup = [r["miou"] for r in rows if r.get("family") == "real" and r["shots"] == 1000]
        for frac, style in ((0.9, "--"), (0.75, ":")) if sup else ():
            ax.axhline(frac * sup[0], color="grey", ls=style, lw=1, label=f"goal: {frac:.0%} of supervised-1000")
        ax.set_xscale("log")
        ax.set_xlabel("annotated images (k shots or N)")
        ax.set_ylabel(f"mIoU, {self.cfg.n_test} rendered test images")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        save_figure(fig, self.results / "autoshot_miou.png")


def main() -> None:
    d = AutoshotEvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", default="all", help="comma list of heads, synthK, autoK, realN, table, or all")
    p.add_argument("--out", default="runs/autoshot", help="working folder (heads, datasets, UNets)")
    p.add_argument("--results", default=str(RESULTS), help="where the table and figures go")
    for f, v in asdict(d).items():
        p.add_argument(f"--{f.replace('_', '-')}", type=type(v), default=v)
    args = p.parse_args()
    cfg = AutoshotEvalConfig(**{f: getattr(args, f) for f in asdict(d)})
    r = Runner(cfg, Path(args.out), Path(args.results))
    jobs = args.jobs.split(",")
    if jobs == ["all"]:
        jobs = ["heads"] + [f"auto{k}" for k in SHOTS] + [f"real{n}" for n in REAL_N] + ["table"]
    for job in jobs:
        t0 = time.perf_counter()
        if job == "heads":
            r.heads()
        elif job == "table":
            r.table()
        elif job.startswith("synth"):
            r.synth(int(job[5:]))
        elif job.startswith("auto"):
            k, _, variant = job[4:].partition(":")
            r.auto(int(k), variant or None)
        elif job.startswith("real"):
            r.real(int(job[4:]))
        else:
            raise SystemExit(f"unknown job {job!r}")
        print(f"[{job}] done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
