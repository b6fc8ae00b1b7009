"""Few-shot segmentation heads on generator features, each with its first layer fused.

Every head starts with a 1x1 projection of the (never materialized) per-pixel feature stack,
computed by `ganseg.ops.resample_accumulate`, with the head's first activation (the body's leading
LeakyReLU(0.2)) passed into the op, so on CUDA it is applied in the kernel's epilogue instead of a
separate pass over the K-channel map. Kinds:
- linear: that projection straight to class logits;
- mlp: 1x1 stack (projection -> hidden -> ... -> classes), leaky ReLU;
- cnn: the paper's head: 1x1 -> 128, then 3x3 convs with dilations 2,4,8,1,2,4,8 (widths 64 then
  32), leaky ReLU, and a 3x3 output conv.
`HeadEnsemble` averages N heads' probabilities and reports a per-pixel uncertainty.

Also here, because every room that uses a head needs them (synthesize, segment, the painter's
Propose, the ONNX labeler export): `head_probs` (probabilities + uncertainty of a head or an
ensemble), `check_head_fits` (a head trained on another generator is refused before any work) and
`head_class_names` (the class names a head file records). Fitting a head is `ganseg.headfit`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from ganseg import tagged
from ganseg.errors import BadInput
from ganseg.ops import LEAKY_RELU_SLOPE, resample_accumulate, resample_label

HeadKind = Literal["linear", "mlp", "cnn"]
CNN_DILATIONS = (2, 4, 8, 1, 2, 4, 8)
CNN_WIDTHS = (64, 64, 64, 32, 32, 32, 32)


@dataclass
class HeadConfig:
    kind: HeadKind = "cnn"
    num_classes: int = 10
    feature_channels: list[int] = field(default_factory=list)   # C_l of the layers used, in order
    feature_layers: list[int] = field(default_factory=list)     # indices into G.feature_info
    size: int = 128                                             # output resolution S
    align_corners: bool = False
    mlp_hidden: list[int] = field(default_factory=lambda: [256, 128])
    cnn_first: int = 128
    feature_scales: list[float] = field(default_factory=list)   # per-layer 1/std, set from the shots

    def to_dict(self) -> dict:
        return asdict(self)


class FusedProjection(nn.Module):
    """1x1 conv over concat_l resize(F_l, S), computed without building the concatenation."""

    def __init__(self, channels: Sequence[int], out_channels: int, size: int, align_corners: bool):
        super().__init__()
        total = sum(channels)
        self.weight = nn.Parameter(torch.randn(out_channels, total) / total**0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.size, self.align_corners = size, align_corners
        self.register_buffer("scales", torch.ones(len(channels)))
        self.register_buffer("channels", torch.tensor(list(channels)), persistent=False)

    def folded_weight(self) -> torch.Tensor:
        """Per-layer standardization (activation scales differ ~10x between layers), folded into
        the weight's columns: scaling the feature maps themselves would copy all of them."""
        # output_size given: without it repeat_interleave reads `channels` back to the host (a
        # device sync on CUDA, which would also break CUDA-graph capture of the labeling step)
        return self.weight * self.scales.repeat_interleave(self.channels, output_size=self.weight.shape[1])[None]

    def forward(self, feats: Sequence[torch.Tensor], activation: str = "none") -> torch.Tensor:
        return resample_accumulate(feats, self.folded_weight(), self.bias, self.size, self.align_corners,
                                   activation=activation)

    def label(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, confidence, entropy) per pixel when this projection is a whole (linear) head:
        `ganseg.ops.resample_label`, one kernel pass on CUDA with no K-channel map in memory."""
        return resample_label(feats, self.folded_weight(), self.bias, self.size, self.align_corners)


class SegmentationHead(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        if not cfg.feature_channels:
            raise ValueError("HeadConfig.feature_channels is empty: build heads with head_for(G, ...)")
        first = {"linear": cfg.num_classes, "mlp": cfg.mlp_hidden[0], "cnn": cfg.cnn_first}[cfg.kind]
        self.project = FusedProjection(cfg.feature_channels, first, cfg.size, cfg.align_corners)
        if cfg.feature_scales:
            self.project.scales.copy_(torch.tensor(cfg.feature_scales))
        layers: list[nn.Module] = []
        if cfg.kind == "mlp":
            dims = list(cfg.mlp_hidden) + [cfg.num_classes]
            for a, b in zip(dims[:-1], dims[1:]):
                layers += [nn.LeakyReLU(LEAKY_RELU_SLOPE), nn.Conv2d(a, b, 1)]
        elif cfg.kind == "cnn":
            cin = cfg.cnn_first
            for d, w in zip(CNN_DILATIONS, CNN_WIDTHS):
                layers += [nn.LeakyReLU(LEAKY_RELU_SLOPE), nn.Conv2d(cin, w, 3, padding=d, dilation=d)]
                cin = w
            layers += [nn.LeakyReLU(LEAKY_RELU_SLOPE), nn.Conv2d(cin, cfg.num_classes, 3, padding=1)]
        self.body = nn.Sequential(*layers)
        # the body's leading LeakyReLU runs inside the fused op (kept in `body`: same state-dict keys
        # and module layout for saved heads and the ONNX exporter)
        self.first_activation = "lrelu" if layers else "none"

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """All generator features (as `G.synthesize` returns them) -> logits [N, classes, S, S]."""
        x = self.project([feats[i] for i in self.cfg.feature_layers], activation=self.first_activation)
        body = self.body[1:] if self.first_activation != "none" else self.body
        if self.cfg.kind == "cnn":
            # NHWC: oneDNN runs the dilated 3x3 stack ~2x faster on CPU, cuDNN's tensor-core kernels
            # prefer it too; values are unchanged (a layout, not an op, in an exported graph)
            x = x.contiguous(memory_format=torch.channels_last)
        return body(x)

    def label(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A linear head's (labels uint8, confidence, entropy), each [N, S, S], by the fused op's
        labeling variant: on CUDA its logits never reach memory. Other kinds have a body after the
        first layer: take their logits from forward()."""
        if self.cfg.kind != "linear":
            raise ValueError(f"label() is the linear head's fused path; a {self.cfg.kind} head's labels come from "
                             f"its logits (forward)")
        return self.project.label([feats[i] for i in self.cfg.feature_layers])


def head_for(G, kind: HeadKind, num_classes: int, size: int | None = None, min_resolution: int = 4,
             **kw) -> SegmentationHead:
    """A head sized for generator G, using its conv layers from `min_resolution` up."""
    layers = [i for i, (_, r, _) in enumerate(G.feature_info) if r >= min_resolution]
    cfg = HeadConfig(kind=kind, num_classes=num_classes, size=size or G.resolution,
                     feature_layers=layers, feature_channels=[G.feature_info[i][2] for i in layers], **kw)
    return SegmentationHead(cfg)


class HeadEnsemble(nn.Module):
    """Mean of N heads' probabilities; uncertainty = entropy of the mean or head disagreement."""

    def __init__(self, heads: Sequence[SegmentationHead]):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, feats: Sequence[torch.Tensor], uncertainty: str = "entropy"):
        probs = torch.stack([h(feats).softmax(dim=1) for h in self.heads])  # [H, N, K, S, S]
        mean = probs.mean(0)
        if uncertainty == "entropy":
            unc = -(mean * mean.clamp_min(1e-12).log()).sum(1)
        elif uncertainty == "disagreement":
            unc = (probs.argmax(2) != mean.argmax(1)[None]).float().mean(0)
        else:
            raise ValueError(f"uncertainty must be 'entropy' or 'disagreement', got {uncertainty!r}")
        return mean, unc


HEAD_FORMAT = "ganseg.head/1"
_HEAD_HINT = "train one with `ganseg train-head`"


def save_head(head: SegmentationHead | HeadEnsemble, path: str | Path, extra: dict | None = None) -> None:
    """One head or an ensemble as a tagged safetensors file (`ganseg.tagged`): tensors "<i>.<name>"
    for head i, metadata "configs" (one HeadConfig each) plus `extra` (JSON values, e.g. class_names)."""
    heads = list(head.heads) if isinstance(head, HeadEnsemble) else [head]
    state = {f"{i}.{k}": v for i, h in enumerate(heads) for k, v in h.state_dict().items()}
    tagged.save(path, state, HEAD_FORMAT, {"configs": [h.cfg.to_dict() for h in heads], **(extra or {})})


def load_head(path: str | Path) -> SegmentationHead | HeadEnsemble:
    """A head (or ensemble) in eval mode; `.meta` holds the file's extra metadata (e.g. class_names).

    Every unusable file raises `ganseg.tagged.TaggedFileError` (a UserError and ValueError; a missing
    one also a FileNotFoundError) naming the file and the fix.
    """
    path = Path(path)
    state, meta = tagged.load(path, HEAD_FORMAT, what="ganseg head", hint=_HEAD_HINT)
    configs = meta.get("configs")
    if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
        raise tagged.TaggedFileError(f"{path}: its 'configs' metadata is not a list of head configs; {_HEAD_HINT}")
    heads = []
    for i, c in enumerate(configs):
        try:
            cfg = HeadConfig(**c)
        except TypeError as exc:  # unknown or missing fields
            raise tagged.TaggedFileError(f"{path}: head config {i} is invalid ({exc}); {_HEAD_HINT}") from None
        h = SegmentationHead(cfg)
        try:
            h.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            msg = " ".join(str(exc).split())[:200]
            raise tagged.TaggedFileError(f"{path}: head {i}'s weights do not fit its config ({msg}); "
                                         f"{_HEAD_HINT}") from None
        heads.append(h.eval())
    out = heads[0] if len(heads) == 1 else HeadEnsemble(heads).eval()
    out.meta = {k: v for k, v in meta.items() if k not in ("format", "configs")}
    return out


def head_steps_for(k: int, batch: int = 2, views_per_shot: int = 400, floor: int = 500) -> int:
    """Optimizer steps so that each of k shots is seen about `views_per_shot` times (the default of
    `train-head --steps`). Why: with a fixed 600 steps a 10-shot CNN head fitted its own shots at only
    0.68 mIoU and dropped the eyes; 2 000 steps (400 views per shot) fit them at 0.95 and agree with
    the annotator on held-out generated images at 0.54 instead of 0.42 (benchmarks/autoshot_eval.py)."""
    import math

    return max(floor, math.ceil(views_per_shot * k / max(1, min(batch, k))))


# --------------------------------------------------------------------------------------------
# Using a head

def head_probs(head: SegmentationHead | HeadEnsemble, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs [N,K,S,S], per-pixel uncertainty [N,S,S]) from a head or an ensemble: the ensemble's own
    uncertainty map, or a single head's entropy (nats)."""
    if isinstance(head, HeadEnsemble):
        probs, unc = head(feats)
        return probs.float(), unc.float()
    logp = head(feats).float().log_softmax(dim=1)
    probs = logp.exp()
    return probs, -(probs * logp).sum(dim=1)


def check_head_fits(G, head: SegmentationHead | HeadEnsemble, head_name: str = "the head") -> None:
    """Refuse (one line, before any work) a head trained on another generator's features."""
    heads = list(head.heads) if isinstance(head, HeadEnsemble) else [head]
    info = G.feature_info
    for h in heads:
        layers, channels = h.cfg.feature_layers, h.cfg.feature_channels
        if any(i >= len(info) for i in layers) or [info[i][2] for i in layers] != list(channels):
            raise BadInput(f"{head_name} expects generator layers {layers} with channels {list(channels)}; this "
                           f"generator has {[c for _, _, c in info]}: was it trained on another generator? "
                           f"Pass the --ckpt it was trained with, or train a head for this one")


def head_class_names(head: SegmentationHead | HeadEnsemble) -> list[str]:
    """The class names a head (or ensemble) was trained with: the `class_names` its file records
    (`ganseg train-head` writes them from labels.json; `load_head` puts them in `.meta`), else
    `ganseg.labels.default_class_names`. A recorded list of the wrong length is ignored, as a
    mislabelled export would be worse than generic names."""
    from ganseg.labels import default_class_names

    first = head.heads[0] if isinstance(head, HeadEnsemble) else head
    k = first.cfg.num_classes
    names = (getattr(head, "meta", None) or {}).get("class_names")
    if isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names):
        return list(names)
    return default_class_names(k)
