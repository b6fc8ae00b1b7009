"""Few-shot head training: cross-entropy on generator features of 1-10 annotated images.

Annotation workflow (see README "Annotating"):
1. `ganseg sample --seeds 0-4 --out shots/` writes seedNNNN.png and latents.safetensors (z, w+).
2. The user paints a part mask per image: `seedNNNN_mask.png`, an indexed PNG whose pixel values
   are class indices (palette free), plus `labels.json` {"classes": [...]} naming the classes.
3. `ganseg train-head --shots shots/ --head cnn --out head.safetensors`.
Labelled *real* images (`NNNN.png` + `NNNN_mask.png`, as `ganseg render` writes) are inverted into
the GAN first (`--real`), and the head is trained on their inverted latents' features.

The fitting itself is the core's `ganseg.headfit.train_head` (the painter's Propose and the protocol
fit heads with it too); this module is the command around it.
"""
from __future__ import annotations

import argparse

from ganseg.headfit import HeadTrainConfig, check_shots, train_head
from ganseg.heads import save_head
from ganseg.shots import load_sampled_shots, shots_from_real


# --------------------------------------------------------------------------------------------
# CLI: ganseg train-head

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import positive_float, positive_int

    d = HeadTrainConfig()
    p.add_argument("--ckpt", default=None, help="generator (default: bundled)")
    p.add_argument("--shots", required=True, help="folder: `ganseg sample` output + seedNNNN_mask.png + labels.json")
    p.add_argument("--real", action="store_true",
                   help="shots are labelled real images (NNNN.png + NNNN_mask.png): invert them first")
    p.add_argument("--head", choices=["linear", "mlp", "cnn"], default=d.kind)
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps per head (default: scaled with the shots so each is seen ~400 times: "
                        "2 000 for 10 shots at batch 2, at least 500)")
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--ensemble", type=positive_int, default=d.ensemble,
                   help="train N heads (different seeds) -> an ensemble with per-pixel uncertainty")
    p.add_argument("--min-resolution", type=positive_int, default=d.min_resolution,
                   help="use generator layers from this resolution up (a power of two up to the generator's)")
    p.add_argument("--invert-steps", type=positive_int, default=300, help="with --real: inversion steps per shot")
    p.add_argument("--include-proposed", action="store_true",
                   help="also train on the unreviewed proposals `ganseg annotate` saved (seedNNNN_proposed.png); "
                        "by default only reviewed masks (seedNNNN_mask.png) are used")
    p.add_argument("--out", required=True, help="head file (.safetensors)")


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator
    from ganseg.paths import check_out_file

    # Everything that can be wrong is checked before the (slow) inversion and training.
    check_out_file(args.out)
    cfg = HeadTrainConfig(kind=args.head, steps=args.steps or 0, lr=args.lr, ensemble=args.ensemble,
                          min_resolution=args.min_resolution)
    cfg.validate()
    G = load_generator(args.ckpt)
    cfg.validate(G)
    if args.real:
        from ganseg.checkpoints import default_discriminator_for, load_discriminator
        from ganseg.invert import InvertConfig

        # shots_from_real reads labels.json, every image and mask (sizes checked) before inverting
        D = load_discriminator(default_discriminator_for(args.ckpt))
        shots = shots_from_real(G, args.shots, InvertConfig(steps=args.invert_steps), D)
    else:
        # says how many reviewed masks (and proposals) it uses; masks without a latent are an error
        shots = load_sampled_shots(args.shots, G.resolution, include_proposed=args.include_proposed, note=print)
        check_shots(G, shots)
    head = train_head(G, shots, cfg)
    save_head(head, args.out, extra={"class_names": shots.class_names, "generator": str(args.ckpt or "default")})
    print(f"trained a {args.head} head on {len(shots.ws)} shot(s): {args.out}")
    return 0
