"""`ganseg eval`: few-shot heads, 1/5/10 shots, under two protocols.

Protocol "generated" (the default; ReGAN's, `ganseg.training.annotator`): the k shots are generated
images (seeds 0..k-1, psi = 1, as `ganseg sample`) painted by the simulated annotator; a head of each
kind learns them (steps scaled with k) and is scored against the annotator on held-out generated
images (`--n-heldout`). 1-shot figures are the mean over 5 different single shots. No inversion: this
is what a person annotating in `ganseg annotate` gets, and the head's own mIoU rung of
benchmarks/autoshot_eval.py's loss ladder.

Protocol "inverted": for k in {1, 5, 10} shots, the shots are the first k images of the *train* split (seeds
0..k-1, fixed), rendered with their exact masks, inverted into the GAN, and a head of each kind is
trained on the inverted latents' features. Test images (the first n of the test split) are
inverted once; each head segments them from their inversions' features. Scores
(`ganseg.evaluate`): per-class IoU over all test pixels pooled, and mIoU = mean over the classes.

Why in training/: the protocol trains (heads with the core's `ganseg.headfit`, and the simulated
annotator, `ganseg.training.annotator`); the metrics it reports are core (`ganseg.evaluate`), which
must not import the trainers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganseg.errors import BadInput
from ganseg.evaluate import markdown_table, predict_from_inversion, score_row
from ganseg.images import make_grid, overlay, save_png, to_uint8, write_atomic


@dataclass
class EvalConfig:
    heads: tuple[str, ...] = ("linear", "mlp", "cnn")
    shots: tuple[int, ...] = (1, 5, 10)
    n_test: int = 50
    invert_steps: int = 200
    head_steps: int = 600       # protocol "inverted"; "generated" scales steps with k unless > 0 is given there
    protocol: str = "generated"
    n_heldout: int = 200


def run_generated_protocol(G, cfg: EvalConfig, out: Path | None = None, head_steps: int = 0) -> dict:
    """Heads on annotated generated shots, scored against the annotator on held-out generated images."""
    from ganseg.images import make_grid as grid
    from ganseg.labels import CLASS_NAMES, PALETTE
    from ganseg.shots import Shots
    from ganseg.heads import head_probs, head_steps_for
    from ganseg.training.annotator import (HELDOUT_SEED0, ONE_SHOT_REPEATS, SHOT_SEEDS, annotate_generated,
                                           annotator_labels, simulated_annotator)
    from ganseg.headfit import HeadTrainConfig, train_head
    from ganseg.faces import render_faces, split_seeds

    names = list(CLASS_NAMES)
    annotator = simulated_annotator(G.resolution)
    test_img, test_lab = render_faces(split_seeds("test", cfg.n_test), resolution=G.resolution)
    ann_row = score_row("simulated annotator (rendered test)", 0, annotator_labels(annotator, test_img), test_lab, names)
    hws, himg, hlab = annotate_generated(G, annotator, range(HELDOUT_SEED0, HELDOUT_SEED0 + cfg.n_heldout))
    results = {"protocol": "generated", "resolution": G.resolution, "n_heldout": cfg.n_heldout, "classes": names,
               "annotator_miou_rendered_test": ann_row["miou"], "rows": []}
    panels = [himg[:8], overlay(himg[:8], hlab[:8], PALETTE)]
    for k in cfg.shots:
        sets = [(SHOT_SEEDS[j],) for j in range(ONE_SHOT_REPEATS)] if k == 1 else [tuple(SHOT_SEEDS[:k])]
        for kind in cfg.heads:
            preds = []
            for seeds in sets:
                ws, _, masks = annotate_generated(G, annotator, seeds)
                batch = min(2, k)
                steps = head_steps or head_steps_for(k, batch)
                head = train_head(G, Shots(ws, torch.from_numpy(masks).long(), names),
                                  HeadTrainConfig(kind=kind, steps=steps, batch=batch))
                with torch.no_grad():
                    preds.append(np.concatenate([head_probs(head, G.synthesize_features(w=hws[i: i + 25])[1])[0]
                                                 .argmax(1).numpy() for i in range(0, len(hws), 25)]))
            runs = [score_row("", k, p, hlab, names) for p in preds]
            row = {"method": f"{kind} head vs annotator", "shots": k, "protocol": "generated", "steps": steps,
                   "miou": float(np.mean([r["miou"] for r in runs])), "miou_runs": [round(r["miou"], 4) for r in runs],
                   "iou": {n: float(np.mean([r["iou"][n] for r in runs])) for n in names}}
            results["rows"].append(row)
            print(f"{kind:6s} {k:2d}-shot  mIoU vs annotator {row['miou']:.3f} ({len(runs)} run(s))")
            if kind == cfg.heads[-1]:
                panels.append(overlay(himg[:8], preds[0][:8].astype(np.uint8), PALETTE))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "fewshot_eval.json", (json.dumps(results, indent=1) + "\n").encode())
        md = (f"Protocol generated: heads on k generated shots painted by the simulated annotator (its own mIoU on "
              f"rendered test: {ann_row['miou']:.3f}), scored against it on {cfg.n_heldout} held-out generated images.\n\n")
        write_atomic(out / "fewshot_eval.md", (md + markdown_table(results)).encode())
        save_png(out / "fewshot_overlays.png", grid(np.concatenate(panels), ncols=8))
    return results


def run_protocol(G, cfg: EvalConfig, D=None, out: Path | None = None) -> dict:
    from ganseg.faces import render_faces, split_seeds
    from ganseg.labels import CLASS_NAMES, PALETTE
    from ganseg.images import from_uint8
    from ganseg.invert import InvertConfig, invert
    from ganseg.shots import Shots
    from ganseg.headfit import HeadTrainConfig, train_head

    res = G.resolution
    inv_cfg = InvertConfig(steps=cfg.invert_steps)
    test_img, test_lab = render_faces(split_seeds("test", cfg.n_test), resolution=res)
    test_inv = invert(G, from_uint8(test_img), inv_cfg, D)
    shot_img, shot_lab = render_faces(split_seeds("train", max(cfg.shots)), resolution=res)
    shot_inv = invert(G, from_uint8(shot_img), inv_cfg, D)
    target = torch.from_numpy(test_lab).long()
    results = {"resolution": res, "n_test": cfg.n_test, "invert_steps": cfg.invert_steps,
               "head_steps": cfg.head_steps, "classes": list(CLASS_NAMES),
               "psnr_test_mean": float(test_inv.psnr.mean()), "psnr_shots_mean": float(shot_inv.psnr.mean()),
               "rows": []}
    panels = [test_img[:8], to_uint8(test_inv.recon[:8]), overlay(test_img[:8], test_lab[:8], PALETTE)]
    for k in cfg.shots:
        shots = Shots(shot_inv.ws[:k], torch.from_numpy(shot_lab[:k]).long(), list(CLASS_NAMES),
                      noise=[n[:k] for n in shot_inv.noise])
        for kind in cfg.heads:
            head = train_head(G, shots, HeadTrainConfig(kind=kind, steps=cfg.head_steps))
            pred = predict_from_inversion(G, head, test_inv)
            row = score_row(f"invert+{kind}", k, pred, target, list(CLASS_NAMES))
            results["rows"].append(row)
            print(f"{kind:6s} {k:2d}-shot  mIoU {row['miou']:.3f}")
            if kind == cfg.heads[-1]:
                panels.append(overlay(test_img[:8], pred[:8].numpy(), PALETTE))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "fewshot_eval.json", (json.dumps(results, indent=1) + "\n").encode())
        write_atomic(out / "fewshot_eval.md", markdown_table(results).encode())
        save_png(out / "fewshot_overlays.png", make_grid(np.concatenate(panels), ncols=8))
    return results


# --------------------------------------------------------------------------------------------
# CLI: ganseg eval

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_int

    d = EvalConfig()
    p.add_argument("--ckpt", default=None, help="generator (default: bundled)")
    p.add_argument("--heads", default=",".join(d.heads), help="comma-separated head kinds: linear, mlp, cnn")
    p.add_argument("--shots", default=",".join(map(str, d.shots)), help="comma-separated shot counts")
    p.add_argument("--n-test", type=positive_int, default=d.n_test, help="held-out test images")
    p.add_argument("--invert-steps", type=positive_int, default=d.invert_steps)
    p.add_argument("--protocol", choices=["generated", "inverted"], default=d.protocol,
                   help="generated (default, ReGAN's): shots are generated images painted by a simulated annotator, "
                        "heads scored against it on held-out generated images; inverted: rendered photos as shots "
                        "and test images, both inverted into the GAN")
    p.add_argument("--n-heldout", type=positive_int, default=d.n_heldout,
                   help="protocol generated: held-out generated images")
    p.add_argument("--head-steps", type=positive_int, default=None,
                   help=f"optimizer steps per head (default: generated: each shot seen ~400 times; inverted: {d.head_steps})")
    p.add_argument("--out", default="benchmarks/results", help="folder for JSON, table and overlays")


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import default_discriminator_for, load_discriminator, load_generator
    from ganseg.paths import check_out_dir

    heads = tuple(h.strip() for h in args.heads.split(","))
    bad = [h for h in heads if h not in ("linear", "mlp", "cnn")]
    if bad:
        raise BadInput(f"--heads {args.heads}: unknown kind(s) {bad}; use linear, mlp and/or cnn, e.g. --heads cnn")
    try:
        shots = tuple(int(s) for s in args.shots.split(","))
    except ValueError:
        raise BadInput(f"--shots {args.shots}: expected comma-separated integers, e.g. --shots 1,5,10") from None
    if any(k < 1 for k in shots):
        raise BadInput(f"--shots {args.shots}: shot counts must be >= 1")
    from ganseg.faces import split_seeds

    try:  # pure: its ValueErrors are about these counts
        split_seeds("test", args.n_test), split_seeds("train", max(shots))
    except ValueError as exc:
        raise BadInput(f"--n-test {args.n_test} / --shots {args.shots}: {exc}; pass smaller counts") from None
    out = check_out_dir(args.out)
    G = load_generator(args.ckpt)
    cfg = EvalConfig(heads=heads, shots=shots, n_test=args.n_test, invert_steps=args.invert_steps,
                     head_steps=args.head_steps or EvalConfig.head_steps, protocol=args.protocol,
                     n_heldout=args.n_heldout)
    if args.protocol == "generated":
        results = run_generated_protocol(G, cfg, out, head_steps=args.head_steps or 0)
    else:
        D = load_discriminator(default_discriminator_for(args.ckpt))
        results = run_protocol(G, cfg, D, out)
    print(markdown_table(results))
    return 0
