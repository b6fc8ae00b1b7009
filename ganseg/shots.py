"""Annotated shots for few-shot heads: generated images (latents + user masks) or real images
(labelled, then inverted into the GAN). Either way a shot is a latent, noise and a mask."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ganseg.errors import BadInput, MissingFile
from ganseg.labels import load_label_png, resize_labels

# a sample folder's masks: reviewed (painted or checked by a person) or proposed (a head's proposal
# that `ganseg annotate` saved as shown, not yet reviewed; docs/annotate.md)
SAMPLED_MASK_RE = re.compile(r"seed(\d+)_(mask|proposed)\.png")


@dataclass
class Shots:
    ws: torch.Tensor                          # [N, num_ws, w_dim]
    masks: torch.Tensor                       # [N, S, S] int64 class indices
    class_names: list[str]
    noise_mode: str = "const"
    noise: list[torch.Tensor] | None = None   # per-layer [N, 1, R, R] (inverted shots)

    def __len__(self) -> int:
        return len(self.ws)


def load_class_names(folder: str | Path) -> list[str]:
    """Class names from FOLDER/labels.json (`ganseg.labels.read_labels_json`: a missing file, bad
    JSON or no "classes" list is a one-line error naming the file and what to write)."""
    from ganseg.labels import read_labels_json

    return list(read_labels_json(Path(folder) / "labels.json").class_names)


def _check_masks(masks: torch.Tensor, names: list[str], where: Path) -> None:
    if int(masks.max()) >= len(names):
        raise BadInput(f"{where}: masks use class {int(masks.max())} but labels.json names {len(names)} classes; "
                       f"add the missing class names to labels.json or fix the masks")


def _mask_fits(mask: np.ndarray, mask_path: Path, hw: tuple[int, int], image_name: str) -> None:
    if mask.shape != tuple(hw):
        raise BadInput(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but {image_name} is {hw[1]}x{hw[0]}; "
                       f"paint the mask at its image's size")


def seed_ranges(seeds: Iterable[int]) -> str:
    """[0, 1, 2, 3, 7, 9, 10] -> '0-3,7,9-10': the `--seeds` text of `ganseg sample` for these seeds."""
    out: list[str] = []
    for s in sorted(set(seeds)):
        if out and s == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out)


def latents_fix(folder: str | Path, seeds: Iterable[int]) -> str:
    """What to run when images of a sample folder have no latent in its latents.safetensors (a second
    `ganseg sample` into the folder replaced the file): sample every seed again."""
    return (f"rerun `ganseg sample --seeds {seed_ranges(seeds)} --out {folder}` with the --ckpt and options that made "
            f"the images (it writes the same images again and latents for all of them; masks are left as they are)")


def load_sampled_shots(folder: str | Path, resolution: int | None = None, include_proposed: bool = False,
                       note: Callable[[str], None] | None = None) -> Shots:
    """`ganseg sample` output + the user's seedNNNN_mask.png files + labels.json.

    Every mask must have its image's size: seedNNNN.png's when present, else `resolution` (the
    generator's); a mismatch is an error naming the mask, before any training.

    Reviewed masks (seedNNNN_mask.png) are used; unreviewed proposals `ganseg annotate` saved
    (seedNNNN_proposed.png) only with `include_proposed` (a proposal the person never looked at is
    the head's guess, not an annotation). A mask whose seed has no latent in latents.safetensors
    cannot be used (the head trains on the generator's features of that latent) and is an error
    naming the files and the fix: it used to be dropped without a word. `note` (e.g. `print`) gets
    one line saying which masks were used and which proposals were left out.
    """
    from ganseg.images import load_rgb
    from ganseg.latents import load_latents

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"--shots {folder}: not a folder; pass the `ganseg sample --out` folder holding "
                          f"latents.safetensors, seedNNNN_mask.png and labels.json")
    lat, info = load_latents(folder / "latents.safetensors")
    names = load_class_names(folder)
    found: dict[int, dict[str, Path]] = {}
    for p in folder.iterdir():
        if (m := SAMPLED_MASK_RE.fullmatch(p.name)) and p.name == f"seed{int(m.group(1)):04d}_{m.group(2)}.png":
            found.setdefault(int(m.group(1)), {})[m.group(2)] = p
    latent_seeds = set(lat["seeds"].tolist())
    orphans = sorted(f.name for seed, kinds in found.items() if seed not in latent_seeds
                     for kind, f in kinds.items() if kind == "mask" or include_proposed)
    if orphans:
        from ganseg.paths import some

        images = {int(m.group(1)) for p in folder.glob("seed*.png") if (m := re.fullmatch(r"seed(\d+)\.png", p.name))}
        raise BadInput(f"{folder}: {len(orphans)} mask(s) have no latent in latents.safetensors, so train-head cannot "
                       f"use them: {some(orphans)}; {latents_fix(folder, images | set(found) | latent_seeds)}, or "
                       f"move those masks out of the folder")
    ws, masks, used, left_out = [], [], {"mask": [], "proposed": []}, []
    for i, seed in enumerate(lat["seeds"].tolist()):
        kinds = found.get(seed, {})
        kind = "mask" if "mask" in kinds else "proposed" if "proposed" in kinds and include_proposed else None
        if "proposed" in kinds and kind != "proposed" and "mask" not in kinds:
            left_out.append(kinds["proposed"].name)
        if kind is not None:
            p = kinds[kind]
            used[kind].append(p.name)
            mask = load_label_png(p)
            img = folder / f"seed{seed:04d}.png"
            if img.is_file():
                _mask_fits(mask, p, load_rgb(img).shape[:2], img.name)
            elif resolution is not None:
                _mask_fits(mask, p, (resolution, resolution), f"the generator's image ({resolution} px)")
            elif masks and mask.shape != tuple(masks[0].shape):
                raise BadInput(f"{p}: mask is {mask.shape[1]}x{mask.shape[0]}, the others {masks[0].shape[1]}x"
                               f"{masks[0].shape[0]}; paint every mask at its image's size")
            ws.append(lat["w"][i])
            masks.append(torch.from_numpy(mask.astype(np.int64)))
    if not masks:
        if left_out:
            raise MissingFile(f"no reviewed seedNNNN_mask.png in {folder}, only {len(left_out)} unreviewed proposal(s) "
                              f"(seedNNNN_proposed.png): review them in `ganseg annotate {folder}`, or pass "
                              f"--include-proposed to train on them as they are")
        raise MissingFile(f"no seedNNNN_mask.png annotations in {folder} "
                          f"(sampled seeds: {lat['seeds'].tolist()[:8]}...); paint at least one")
    if note is not None:
        from ganseg.paths import some

        line = f"shots: {len(used['mask'])} reviewed mask(s)"
        if include_proposed:
            line += f" and {len(used['proposed'])} unreviewed proposal(s) (--include-proposed)"
        line += f": {some(used['mask'] + used['proposed'])}"
        if left_out:
            line += (f"; left out {len(left_out)} unreviewed proposal(s): {some(left_out)} (review them in "
                     f"`ganseg annotate`, or pass --include-proposed)")
        note(line)
    shots = Shots(torch.stack(ws), torch.stack(masks), names, info.get("noise_mode", "const"))
    _check_masks(shots.masks, names, folder)
    return shots


def load_labelled_images(folder: str | Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Real images NNNN.png + NNNN_mask.png (+ labels.json) -> (images [-1,1], masks, names).

    Each mask must have its image's size (checked before anything is resized); images and masks of
    any size are then resized to `resolution` square (masks with nearest-neighbour).
    """
    from ganseg.images import from_uint8, load_rgb, resize_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"--shots {folder}: not a folder; pass a folder of NNNN.png + NNNN_mask.png + labels.json")
    names = load_class_names(folder)
    pairs = [(p, p.with_name(p.stem + "_mask.png")) for p in sorted(folder.glob("*.png"))
             if not p.stem.endswith("_mask") and p.with_name(p.stem + "_mask.png").is_file()]
    if not pairs:
        raise MissingFile(f"no NNNN.png + NNNN_mask.png pairs in {folder}")
    images, masks = [], []
    for a, m in pairs:
        im = load_rgb(a)
        lab = load_label_png(m)
        _mask_fits(lab, m, im.shape[:2], a.name)
        images.append(resize_rgb(im, resolution))
        lab = resize_labels(lab, (resolution, resolution))  # nearest (the one label resize): labels stay labels
        masks.append(torch.from_numpy(lab.astype(np.int64)))
    masks_t = torch.stack(masks)
    _check_masks(masks_t, names, folder)
    return from_uint8(np.stack(images)), masks_t, names


def shots_from_real(G, folder: str | Path, cfg=None, D=None) -> Shots:
    """Invert labelled real images; their latents and noise become shots for the head."""
    from ganseg.invert import invert

    images, masks, names = load_labelled_images(folder, G.resolution)
    inv = invert(G, images, cfg, D)
    print(f"inverted {len(images)} shot(s): mean PSNR {float(inv.psnr.mean()):.2f} dB")
    return Shots(inv.ws, masks, names, noise=inv.noise)


@torch.no_grad()
def shot_features(G, shots: Shots, batch: int = 8) -> list[torch.Tensor]:
    """Per-layer features of the shots at native resolution (no channel stack is built)."""
    chunks = []
    for i in range(0, len(shots), batch):
        noise = [n[i: i + batch] for n in shots.noise] if shots.noise is not None else None
        chunks.append(G.synthesize_features(w=shots.ws[i: i + batch], noise_mode=shots.noise_mode,
                                            noise=noise)[1])
    return [torch.cat(layer) for layer in zip(*chunks)]
