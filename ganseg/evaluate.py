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
