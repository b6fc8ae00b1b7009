"""Segmentation metrics (confusion matrix, per-class IoU, mIoU), prediction from inversions, and the
results table, shared by `ganseg eval`, `train-unet`, the export checks and the benchmarks.

Scores: per-class IoU over all pixels pooled, and mIoU = mean over the classes present. ReGAN's
evaluation protocol itself (`ganseg eval`) trains heads, so it lives with the trainers
(`ganseg.training.eval_protocol`); this core module imports nothing from training/.
"""
from __future__ import annotations


import numpy as np
import torch

from ganseg.errors import BadInput


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, K] counts, rows = target class, columns = predicted class."""
    idx = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: torch.Tensor) -> torch.Tensor:
    """IoU per class from a confusion matrix; NaN for classes absent from both."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(conf: torch.Tensor) -> float:
    return float(np.nanmean(iou_per_class(conf).numpy()))


def score_row(method: str, shots: int, pred, target, class_names: list[str], **extra) -> dict:
    """A table row: mIoU and per-class IoU of label maps `pred` against `target` (any int arrays)."""
    pred, target = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(target))
    if pred.shape != target.shape:
        raise BadInput(f"predictions {list(pred.shape)} and targets {list(target.shape)} differ in shape")
    conf = confusion_matrix(pred, target, len(class_names))
    ious = iou_per_class(conf)
    return {"method": method, "shots": shots, "miou": mean_iou(conf),
            "iou": {n: float(v) for n, v in zip(class_names, ious)}, **extra}


@torch.no_grad()
def predict_from_inversion(G, head, inv, batch: int = 8) -> torch.Tensor:
    """Label maps [N, S, S] for inverted images: their features through the head."""
    preds = []
    for i in range(0, len(inv.ws), batch):
        noise = [n[i: i + batch] for n in inv.noise]
        _, feats = G.synthesize_features(w=inv.ws[i: i + batch], noise=noise)
        out = head(feats)
        probs = out[0] if isinstance(out, tuple) else out  # ensembles return (probs, uncertainty)
        preds.append(probs.argmax(1))
    return torch.cat(preds)


def markdown_table(results: dict, shots_header: str = "shots") -> str:
    names = results["classes"]
    head = f"| method | {shots_header} | mIoU | " + " | ".join(names) + " |\n"
    head += "|---|---:|---:|" + "---:|" * len(names) + "\n"
    rows = "".join(f"| {r['method']} | {r['shots']} | {r['miou']:.3f} | "
                   + " | ".join(f"{r['iou'][n]:.2f}" for n in names) + " |\n" for r in results["rows"])
    return head + rows


# --------------------------------------------------------------------------------------------
# CLI: ganseg score (predicted masks against ground-truth masks, matched by name)

def score_folders(pred_dir, truth_dir) -> dict:
    """Score every `NAME_mask.png` of `pred_dir` against `truth_dir/NAME_mask.png` (the names
    `ganseg segment` / `ganseg client` and `ganseg render` write). Class names from truth_dir's
    labels.json when present (the procedural domain's otherwise)."""
    from pathlib import Path

    from ganseg.errors import MissingFile
    from ganseg.labels import CLASS_NAMES, load_label_png, read_labels_json

    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for d, what in ((pred_dir, "predicted"), (truth_dir, "ground-truth")):
        if not d.is_dir():
            raise MissingFile(f"{d}: no such folder of {what} NAME_mask.png files")
    names = (list(read_labels_json(truth_dir).class_names) if (truth_dir / "labels.json").is_file()
             else list(CLASS_NAMES))
    pairs = [(p, truth_dir / p.name) for p in sorted(pred_dir.glob("*_mask.png")) if (truth_dir / p.name).is_file()]
    if not pairs:
        raise MissingFile(f"no NAME_mask.png in {pred_dir} has a namesake in {truth_dir}: pass the folder "
                          f"`ganseg segment`/`client` wrote and the one with the true masks (e.g. `ganseg render`'s)")
    conf = torch.zeros(len(names), len(names), dtype=torch.long)
    for p, t in pairs:
        pred, truth = load_label_png(p), load_label_png(t)
        if pred.shape != truth.shape:
            raise BadInput(f"{p}: mask {pred.shape[1]}x{pred.shape[0]} but {t} is {truth.shape[1]}x{truth.shape[0]}; "
                           f"masks must be at the image's own size")
        if int(pred.max()) >= len(names) or int(truth.max()) >= len(names):
            raise BadInput(f"{p} / {t}: class index above {len(names) - 1} ({len(names)} classes: {names})")
        conf += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), len(names))
    ious = iou_per_class(conf)
    return {"images": len(pairs), "miou": mean_iou(conf),
            "iou": {n: (float(v) if v == v else None) for n, v in zip(names, ious)}}  # None: class in neither


def add_arguments(p) -> None:
    p.add_argument("pred", help="folder of predicted NAME_mask.png (what `ganseg segment` / `ganseg client` wrote)")
    p.add_argument("truth", help="folder of true NAME_mask.png with the same names (e.g. `ganseg render`'s)")
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")


def run(args) -> int:
    import json

    from ganseg.images import write_atomic

    res = score_folders(args.pred, args.truth)
    print(f"mIoU {res['miou']:.3f} on {res['images']} image(s): "
          + ", ".join(f"{n} {v:.2f}" for n, v in res["iou"].items() if v is not None))
    if args.json:
        write_atomic(args.json, (json.dumps(res, indent=1) + "\n").encode())
    return 0
