"""`ganseg synthesize`: the auto-shot dataset. GAN images labelled by a few-shot head, in shards.

ReGAN's second stage: once a head segments generated images well, the generator becomes an
unlimited source of labelled data, and an ordinary network (the UNet of `ganseg train-unet`)
learns to segment *real* images from it without the expensive GAN inversion at test time.

Layout of OUT::

    shard_00000.safetensors  images uint8 [M,H,W,3], labels uint8 [M,H,W], seeds int64 [M],
                             uncertainty float32 [M]; with --soft-topk K also topk_idx uint8
                             [M,K,H,W] and topk_prob float16 [M,K,H,W] (the head's K most likely
                             classes per pixel, probabilities not renormalized)
    index.json               manifest of a single-process run (index.partIofN.json per process
                             with --shard I/N); `read_manifest` merges them

Shard k holds seeds [seed_offset + k*shard_size, ...) (fewer at the end), whichever process makes
it, so a dataset is the same set of bytes however many processes filled it. Process i of n makes
the shards k with k % n == i.

Determinism and resuming: image s is z = RandomState(s).randn (NVlabs convention) through the
generator with its constant noise, labelled by the head; nothing else is random. A shard file is
written to a temp file, fsynced and renamed; only then is it listed in the manifest (rewritten the
same way), so a listed shard is complete. On restart, shards listed (in any part) whose file is
present with the listed size and seeds are skipped; everything else is made again, byte-identical.

Uncertainty (stored per image; higher = less trustworthy): mean over pixels of the entropy (nats)
of the head's class probabilities, or of the ensemble's uncertainty map for a HeadEnsemble.
With --max-uncertainty U, images above U (or NaN) are left out of the shard files but stay in the
manifest (seed, uncertainty, class histogram) with excluded=true.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ganseg.errors import BadInput, MissingFile
from ganseg.heads import HeadEnsemble, SegmentationHead, check_head_fits, head_probs
from ganseg.images import to_uint8, write_atomic
from ganseg.ops import resize
from ganseg.labels import default_class_names
from ganseg.latents import z_from_seeds
from ganseg.tagged import state_sha256

FORMAT = "ganseg.synth/1"
MANIFEST = "index.json"
_PART_RE = re.compile(r"index\.part(\d+)of(\d+)\.json")

Head = SegmentationHead | HeadEnsemble


@dataclass
class SynthConfig:
    """What defines a synthesized dataset (all but `batch`, which only trades memory for speed)."""

    n: int = 10_000                 # images: seeds [seed_offset, seed_offset + n)
    seed_offset: int = 0
    shard_size: int = 256           # images per shard file
    batch: int = 16                 # images per generator call
    truncation: float = 1.0
    soft_topk: int = 0              # 0 = hard labels only
    max_uncertainty: float | None = None
    noise_mode: str = "const"       # "const" or "none": both deterministic per seed
    class_names: list[str] = field(default_factory=list)  # [] = from the head's class count

    def validate(self) -> None:
        if self.n < 1:
            raise BadInput(f"n must be >= 1, got {self.n}")
        if self.seed_offset < 0 or self.seed_offset + self.n > 2**32:
            raise BadInput(f"seeds must lie in [0, 2**32) (numpy RandomState), got offset {self.seed_offset} "
                             f"and n {self.n}")
        if self.shard_size < 1 or self.batch < 1:
            raise BadInput(f"shard_size and batch must be >= 1, got {self.shard_size} and {self.batch}")
        if self.noise_mode not in ("const", "none"):
            raise BadInput(f"noise_mode must be 'const' or 'none' (random noise is not reproducible), "
                           f"got {self.noise_mode!r}")
        if self.soft_topk < 0:
            raise BadInput(f"soft_topk must be >= 0, got {self.soft_topk}")

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("batch")
        return d


# --------------------------------------------------------------------------------------------
# Shard plan (pure)

def num_shards(cfg: SynthConfig) -> int:
    return -(-cfg.n // cfg.shard_size)


def shard_seeds(cfg: SynthConfig, k: int) -> list[int]:
    start = cfg.seed_offset + k * cfg.shard_size
    return list(range(start, min(start + cfg.shard_size, cfg.seed_offset + cfg.n)))


def shard_name(cfg: SynthConfig, k: int) -> str:
    digits = max(5, len(str(num_shards(cfg) - 1)))
    return f"shard_{k:0{digits}d}.safetensors"


def part_shards(cfg: SynthConfig, part: tuple[int, int]) -> list[int]:
    """Shards of process i of n: round robin, so every process gets a similar share."""
    i, n = part
    return list(range(i, num_shards(cfg), n))


def manifest_name(part: tuple[int, int]) -> str:
    return MANIFEST if part == (0, 1) else f"index.part{part[0]}of{part[1]}.json"


def parse_part(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise BadInput(f"bad --shard {text!r}: use i/n with 0 <= i < n, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def part_from_env(env: dict | None = None) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun and most job launchers set them; (0, 1) when absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return 0, 1
    try:
        return parse_part(f"{env.get('RANK', '0')}/{env['WORLD_SIZE']}")
    except ValueError:
        raise BadInput(f"bad RANK/WORLD_SIZE environment ({env.get('RANK')!r}/{env.get('WORLD_SIZE')!r})") from None


# --------------------------------------------------------------------------------------------
# Labelling (pure tensor functions)

# (a head's probabilities and the generator check are `ganseg.heads.head_probs` / `check_head_fits`)

@torch.no_grad()
def label_batch(G, head: Head, seeds: Sequence[int], cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Generate and label one batch: images, labels, uncertainty and (soft_topk > 0) top-k targets.

    Every head's first layer is the fused op (`ganseg.ops`; on CUDA the tensor-core kernel, under
    no_grad "auto" picks it). A single linear head without top-k targets needs no class map at all:
    its labels and per-pixel entropy come from the op's labeling variant directly."""
    z = z_from_seeds(list(seeds), G.z_dim).to(G.device)
    img, feats = G.synthesize_features(z=z, truncation_psi=cfg.truncation, noise_mode=cfg.noise_mode)
    if isinstance(head, SegmentationHead) and head.cfg.kind == "linear" and not cfg.soft_topk:
        labels, _, unc = head.label(feats)
    else:
        probs, unc = head_probs(head, feats)
        labels = probs.argmax(1).to(torch.uint8)
    size = labels.shape[-1]
    if img.shape[-1] != size:  # a head may label at another resolution: images follow the labels
        img = resize(img.float(), size)
    out = {"images": to_uint8(img), "labels": labels.cpu().numpy(),
           "uncertainty": unc.mean(dim=(1, 2)).cpu().numpy().astype(np.float32)}
    if cfg.soft_topk:
        p, idx = probs.topk(min(cfg.soft_topk, probs.shape[1]), dim=1)
        out["topk_idx"] = idx.to(torch.uint8).cpu().numpy()
        out["topk_prob"] = p.to(torch.float16).cpu().numpy()
    return out


def make_shard(G, head: Head, cfg: SynthConfig, k: int, num_classes: int) -> tuple[bytes, dict]:
    """(safetensors bytes, manifest entry) of shard k; depends only on (G, head, cfg identity, k)."""
    from safetensors.numpy import save

    seeds = shard_seeds(cfg, k)
    parts = [label_batch(G, head, seeds[i: i + cfg.batch], cfg) for i in range(0, len(seeds), cfg.batch)]
    data = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    unc = data["uncertainty"]
    # NaN never passes the filter: a head that produced NaN has not labelled anything
    keep = np.ones(len(seeds), bool) if cfg.max_uncertainty is None else unc <= cfg.max_uncertainty
    hist = [np.bincount(lab.ravel(), minlength=num_classes).tolist() for lab in data["labels"]]
    tensors = {key: np.ascontiguousarray(v[keep]) for key, v in data.items()}
    tensors["seeds"] = np.asarray(seeds, np.int64)[keep]
    blob = save(tensors, metadata={"ganseg": json.dumps({"format": FORMAT, "shard": k}, sort_keys=True)})
    entry = {"index": k, "file": shard_name(cfg, k), "seeds": seeds,
             "uncertainty": [round(float(u), 6) for u in unc], "excluded": [bool(not x) for x in keep],
             "histogram": hist, "images": int(keep.sum()), "bytes": len(blob),
             "sha256": hashlib.sha256(blob).hexdigest()}
    return blob, entry


# --------------------------------------------------------------------------------------------
# Files

def dataset_identity(G, head: Head, cfg: SynthConfig) -> dict:
    heads = list(head.heads) if isinstance(head, HeadEnsemble) else [head]
    k = heads[0].cfg.num_classes
    ident = cfg.identity()
    ident["class_names"] = list(cfg.class_names) or default_class_names(k)
    if len(ident["class_names"]) != k:
        raise BadInput(f"{len(ident['class_names'])} class names given, the head has {k} classes")
    doc = {"config": ident,
           "generator": {"config": G.cfg.to_dict(), "sha256": state_sha256(G)},
           "head": {"configs": [h.cfg.to_dict() for h in heads], "sha256": state_sha256(head),
                    "uncertainty": "ensemble" if isinstance(head, HeadEnsemble) else "entropy"},
           "resolution": heads[0].cfg.size, "num_classes": k}
    return json.loads(json.dumps(doc))  # tuples -> lists, so it compares equal to a parsed manifest


def manifest_bytes(m: dict) -> bytes:
    """JSON with one line per shard: readable, diffable, and the same bytes for the same dataset."""
    head = {k: v for k, v in m.items() if k != "shards"}
    lines = [f' {json.dumps(k)}: {json.dumps(v, sort_keys=True)}' for k, v in head.items()]
    shards = ",\n  ".join(json.dumps(e, sort_keys=True, separators=(",", ":")) for e in m["shards"])
    lines.append(f' "shards": [\n  {shards}\n ]' if m["shards"] else ' "shards": []')
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def _read_json(path: Path) -> dict:
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: unreadable manifest ({exc})") from None
    if (not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("shards"), list)
            or not isinstance(m.get("dataset"), dict)):
        raise BadInput(f"{path}: not a ganseg synthesized-dataset manifest (format {FORMAT})")
    return m


def manifest_files(out_dir: Path) -> list[Path]:
    files = [out_dir / MANIFEST] if (out_dir / MANIFEST).is_file() else []
    return files + sorted(p for p in out_dir.glob("index.part*of*.json") if _PART_RE.fullmatch(p.name))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """All manifest parts of a dataset merged: {"dataset", "num_shards", "shards" (by index), "parts"}."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MissingFile(f"synthesized dataset not found: {out_dir} is not a directory")
    files = manifest_files(out_dir)
    if not files:
        raise MissingFile(f"{out_dir}: no {MANIFEST} or index.partIofN.json: not a synthesized dataset "
                          f"(or no shard has finished yet)")
    merged: dict[int, dict] = {}
    first = None
    for path in files:
        m = _read_json(path)
        if first is None:
            first = (path, m)
        elif m["dataset"] != first[1]["dataset"]:
            diff = ", ".join(_differences(m["dataset"], first[1]["dataset"])[:6])
            raise BadInput(f"{path} and {first[0]} describe different datasets (differ in: {diff})")
        for e in m["shards"]:
            old = merged.get(e["index"])
            if old is not None and old["sha256"] != e["sha256"]:
                raise BadInput(f"{path}: shard {e['index']} differs from the one another manifest part lists "
                               f"(sha256 {e['sha256'][:12]} vs {old['sha256'][:12]})")
            merged[e["index"]] = e
    return {"dataset": first[1]["dataset"], "num_shards": num_shards(_config_from_identity(first[1]["dataset"])),
            "shards": [merged[k] for k in sorted(merged)], "parts": [p.name for p in files]}


def _config_from_identity(ident: dict) -> SynthConfig:
    try:
        return SynthConfig(**ident["config"])
    except (KeyError, TypeError) as exc:
        raise BadInput(f"manifest has an unknown dataset config ({exc})") from None


def _shard_file_ok(out_dir: Path, entry: dict) -> bool:
    """Listed shard still intact? Size and stored seeds must match (cheap: reads only the seeds)."""
    from safetensors import safe_open

    path = out_dir / entry["file"]
    try:
        if path.stat().st_size != entry["bytes"]:
            return False
        with safe_open(str(path), framework="np") as f:
            seeds = f.get_tensor("seeds").tolist()
    except Exception:  # missing, truncated or garbled: make it again
        return False
    kept = [s for s, x in zip(entry["seeds"], entry["excluded"]) if not x]
    return seeds == kept


# --------------------------------------------------------------------------------------------
# The stage

def synthesize_dataset(G, head: Head, cfg: SynthConfig, out_dir: str | os.PathLike,
                       part: tuple[int, int] = (0, 1), progress: bool = True) -> dict:
    """Make (or finish) this process's shards of the dataset in `out_dir`; returns its manifest part.

    Safe to call again after a crash or kill: completed shards are kept, the rest made anew.
    """
    cfg.validate()
    if not 0 <= part[0] < part[1]:
        raise BadInput(f"part must be (i, n) with 0 <= i < n, got {part}")
    check_head_fits(G, head)
    G.eval(), head.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ident = dataset_identity(G, head, cfg)
    num_classes = ident["num_classes"]

    listed: dict[int, dict] = {}
    mine: dict[int, dict] = {}
    my_file = out_dir / manifest_name(part)
    for path in manifest_files(out_dir):
        m = _read_json(path)
        if m["dataset"] != ident:
            diff = ", ".join(_differences(m["dataset"], ident)[:6])
            raise BadInput(f"{out_dir} already holds a dataset made differently ({path.name} differs in: "
                           f"{diff}); use another --out or the same settings")
        for e in m["shards"]:
            listed.setdefault(e["index"], e)
            if path == my_file:
                mine[e["index"]] = e
    todo = part_shards(cfg, part)
    # leftovers of a killed write of our own shards/manifest (other processes' temp files are theirs)
    for k in todo:
        for tmp in out_dir.glob(f".{shard_name(cfg, k)}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in out_dir.glob(f".{my_file.name}.*.tmp"):
        tmp.unlink(missing_ok=True)

    done = {k for k in todo if k in listed and _shard_file_ok(out_dir, listed[k])}
    mine = {k: e for k, e in mine.items() if k in done}
    manifest = {"format": FORMAT, "dataset": ident, "part": list(part), "num_shards": num_shards(cfg),
                "shards": [mine[k] for k in sorted(mine)]}
    total = sum(len(shard_seeds(cfg, k)) for k in todo)
    initial = sum(len(shard_seeds(cfg, k)) for k in done)
    bar = tqdm(total=total, initial=initial, unit="img", desc=f"synthesize {part[0]}/{part[1]}",
               disable=not progress, dynamic_ncols=True)
    with bar:
        for k in todo:
            if k in done:
                continue
            blob, entry = make_shard(G, head, cfg, k, num_classes)
            write_atomic(out_dir / entry["file"], blob)
            mine[k] = entry
            manifest["shards"] = [mine[j] for j in sorted(mine)]
            write_atomic(my_file, manifest_bytes(manifest))
            bar.set_postfix(shard=k, kept=f"{entry['images']}/{len(entry['seeds'])}", refresh=False)
            bar.update(len(entry["seeds"]))
    if not (my_file.is_file()):
        write_atomic(my_file, manifest_bytes(manifest))  # nothing was left to do: still leave a manifest part
    return manifest


# --------------------------------------------------------------------------------------------
# Loading (for the UNet trainer)

@dataclass
class SynthDataset:
    images: np.ndarray               # uint8 [N, H, W, 3]
    labels: np.ndarray               # uint8 [N, H, W]
    seeds: np.ndarray                # int64 [N]
    uncertainty: np.ndarray          # float32 [N]
    class_names: list[str]
    topk_idx: np.ndarray | None      # uint8 [N, K, H, W]
    topk_prob: np.ndarray | None     # float16 [N, K, H, W]
    complete_shards: int
    num_shards: int

    def __len__(self) -> int:
        return len(self.seeds)


def load_synth_dataset(path: str | os.PathLike, max_uncertainty: float | None = None,
                       soft: bool = True, verify: bool = True) -> SynthDataset:
    """Every complete shard of a dataset (all manifest parts), optionally with a stricter filter.

    Shards not finished yet are simply absent (`complete_shards` < `num_shards`). A listed shard
    whose file is missing or does not match its checksum is an error naming the file.
    """
    from safetensors.numpy import load

    out_dir = Path(path)
    m = read_manifest(out_dir)
    ident = m["dataset"]
    soft = soft and ident["config"]["soft_topk"] > 0
    keys = ["images", "labels", "seeds", "uncertainty"] + (["topk_idx", "topk_prob"] if soft else [])
    cols: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for e in m["shards"]:
        f = out_dir / e["file"]
        if not f.is_file():
            raise MissingFile(f"{f}: shard {e['index']} is listed in the manifest but its file is missing")
        blob = f.read_bytes()
        if verify and hashlib.sha256(blob).hexdigest() != e["sha256"]:
            raise BadInput(f"{f}: corrupt shard (sha256 differs from the manifest; delete it and rerun "
                           f"`ganseg synthesize` with the same arguments to make it again)")
        try:
            t = load(blob)
            missing = [k for k in keys if k not in t]
            if missing:
                raise BadInput(f"missing tensors {missing}")
        except Exception as exc:
            raise BadInput(f"{f}: unreadable shard ({exc})") from None
        sel = slice(None) if max_uncertainty is None else t["uncertainty"] <= max_uncertainty
        for k in keys:
            cols[k].append(t[k][sel])
    res = ident["resolution"]
    empty = {"images": (0, res, res, 3), "labels": (0, res, res), "seeds": (0,), "uncertainty": (0,),
             "topk_idx": (0, ident["config"]["soft_topk"], res, res), "topk_prob": (0, ident["config"]["soft_topk"], res, res)}
    dtypes = {"images": np.uint8, "labels": np.uint8, "seeds": np.int64, "uncertainty": np.float32,
              "topk_idx": np.uint8, "topk_prob": np.float16}
    arr = {k: np.concatenate(v) if v else np.zeros(empty[k], dtypes[k]) for k, v in cols.items()}
    return SynthDataset(images=arr["images"], labels=arr["labels"], seeds=arr["seeds"],
                        uncertainty=arr["uncertainty"], class_names=list(ident["config"]["class_names"]),
                        topk_idx=arr.get("topk_idx"), topk_prob=arr.get("topk_prob"),
                        complete_shards=len(m["shards"]), num_shards=m["num_shards"])


# --------------------------------------------------------------------------------------------
# CLI: ganseg synthesize

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ganseg.argtypes import finite_float, nonnegative_float, nonnegative_int, positive_int

    d = SynthConfig()
    p.add_argument("--ckpt", default=None, help="generator .pt/.pkl/.safetensors (default: bundled)")
    p.add_argument("--head", required=True, help="head file from `ganseg train-head` (.safetensors)")
    # --n-images: torchrun's own parser stops at an ambiguous "--n" (its --nnodes, --nproc-per-node, ...)
    # even after the module's name, so under torchrun the long spelling is the one that works
    p.add_argument("--n", "--n-images", dest="n", type=positive_int, default=d.n,
                   help="images in the whole dataset (under torchrun write --n-images)")
    p.add_argument("--out", required=True, help="dataset folder (shards + manifest); rerun with the same "
                   "arguments to resume")
    p.add_argument("--shard", default=None,
                   help="i/n: this process makes part i of n (default: RANK/WORLD_SIZE env, else 0/1)")
    p.add_argument("--batch", type=positive_int, default=d.batch)
    p.add_argument("--shard-size", type=positive_int, default=d.shard_size, help="images per shard file")
    p.add_argument("--truncation", type=finite_float, default=d.truncation)
    p.add_argument("--soft-topk", type=nonnegative_int, default=d.soft_topk, help="also store the top-K class probabilities")
    p.add_argument("--max-uncertainty", type=nonnegative_float, default=None,
                   help="leave out images whose mean per-pixel uncertainty (nats) is above this")
    p.add_argument("--seed-offset", type=nonnegative_int, default=d.seed_offset)
    p.add_argument("--noise-mode", choices=["const", "none"], default=d.noise_mode)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")


def _head_class_names(path: str) -> list[str]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        names = (f.metadata() or {}).get("class_names")
    return list(json.loads(names)) if names else []


class Stopped(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so no `except Exception` swallows it)."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped()


def _report_stop(out: Path, cfg: SynthConfig, part: tuple[int, int], how: str) -> None:
    """Where an interrupted run stopped, and that rerunning the same command resumes there."""
    todo = part_shards(cfg, part)
    listed: set[int] = set()
    f = out / manifest_name(part)
    if f.is_file():
        try:
            listed = {e["index"] for e in _read_json(f)["shards"]}
        except BadInput:
            pass
    done = [k for k in todo if k in listed]
    nxt = next((k for k in todo if k not in listed), None)
    where = (f"at shard {nxt} (seeds {shard_seeds(cfg, nxt)[0]}-{shard_seeds(cfg, nxt)[-1]}, not kept)"
             if nxt is not None else "after the last shard")
    print(f"ganseg synthesize: {how}: stopped {where}; {len(done)}/{len(todo)} shard(s) of part "
          f"{part[0]}/{part[1]} are complete in {out}. Rerun the same command to resume from there "
          f"(finished shards are kept, byte-identical).", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ganseg.checkpoints import load_generator
    from ganseg.heads import load_head
    from ganseg.paths import check_out_dir

    check_out_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    part = parse_part(args.shard) if args.shard else part_from_env()
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    head = load_head(args.head)
    G = load_generator(args.ckpt, device=device)
    head = head.to(device)
    check_head_fits(G, head, f"--head {args.head}")
    cfg = SynthConfig(n=args.n, seed_offset=args.seed_offset, shard_size=args.shard_size, batch=args.batch,
                      truncation=args.truncation, soft_topk=args.soft_topk, max_uncertainty=args.max_uncertainty,
                      noise_mode=args.noise_mode, class_names=_head_class_names(args.head))
    cfg.validate()
    t0 = time.perf_counter()
    # SIGTERM (a scheduler's kill, `timeout`) and Ctrl-C end the run with a word about where it
    # stopped; the shard being made is discarded (temp file removed), finished ones stay listed.
    old = signal.signal(signal.SIGTERM, _raise_stopped) if threading.current_thread() is threading.main_thread() else None
    try:
        m = synthesize_dataset(G, head, cfg, args.out, part)
    except (Stopped, KeyboardInterrupt) as exc:
        _report_stop(Path(args.out), cfg, part, "SIGTERM" if isinstance(exc, Stopped) else "interrupted")
        return 128 + (signal.SIGTERM if isinstance(exc, Stopped) else signal.SIGINT)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    dt = time.perf_counter() - t0
    made = sum(len(e["seeds"]) for e in m["shards"])
    kept = sum(e["images"] for e in m["shards"])
    print(f"part {part[0]}/{part[1]}: {len(m['shards'])} shard(s), {kept}/{made} images kept, "
          f"{dt:.1f} s; manifest {Path(args.out) / manifest_name(part)}")
    merged = read_manifest(args.out)
    if len(merged["shards"]) == merged["num_shards"]:
        print(f"dataset complete: {merged['num_shards']} shard(s) in {args.out}")
    else:
        print(f"dataset: {len(merged['shards'])}/{merged['num_shards']} shards complete (other parts pending)")
    return 0
