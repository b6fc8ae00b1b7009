"""Adopt a generator as ganseg's bundled default if, and only if, the quality probe finds it better.

    make adopt G=gen.safetensors D=disc.safetensors [BUDGET=quick]
    python tools/adopt.py G D [--budget full|quick] [--work runs/adopt] [--dry-run]
    python tools/adopt.py runs/gan64_warm              # a train-gan run folder: its checkpoint's EMA G + D

Whoever has a better generator in hand (a GPU run's `tools/gpu_pass.py` export, a longer CPU run's
`export_bundle`) finishes the job with this one command (issue 16):

1. probe: `ganseg gan-quality`'s two figures (ganseg/quality.py: Fréchet distance to rendered images
   in the probe's feature space, share of images with skin, two eyes, nose and mouth) for the
   candidate and the bundled default on the same seeds, at the lower of their resolutions. Better
   means a lower distance and at least the same parts share; otherwise it says so and stops (exit 0,
   nothing changed).
2. the candidate G + D go into a staging folder (WORK/staging) as fp16, the shipped format;
3. benchmarks/autoshot_eval.py on them: the 1/5/10-shot heads (inverted shots), the auto-shot UNets
   (the 10-shot one becomes the default UNet, as docs/default_unet.md describes) and the supervised
   UNets, on the same test seeds; beside it, in a second process, the few-shot protocol
   (`ganseg eval`'s `run_protocol`, linear/MLP/CNN heads) with the candidate's discriminator;
4. a second gate: the new default UNet must score at least the shipped one on the same test images
   (a short budget's UNet can lose even with a better generator); otherwise it says so and stops;
5. the model cards (docs/default_generator.md quality table, docs/default_unet.md), docs/fewshot.md,
   the README figures and the result tables are rewritten in the staging folder;
6. only when everything above succeeded are the files swapped in (`os.replace` of copies written
   beside their targets; the replaced ones are kept under WORK/replaced/). A failure anywhere before
   leaves ganseg/weights, docs and results as they were.

Budgets (`--budget`): `full` is the recipe the current tables were made with (hours on 2 CPU cores);
`quick` cuts the probe to 500 images, inversion steps to 80, head steps by half, the auto-shot data
to 800 images, UNet steps to 400 and skips the few-shot rerun (figures then say so): 41 min on the
shared 2-core machine at load 4-8 (probe 6, tables 32, cards 4), not 25; a preview: its 400-step
UNets are weaker than the 2 000-step ones (the bundled generator's: 0.239 vs 0.264 shipped), so the
second gate keeps the shipped UNet unless the generator is much better. `tiny` exists for the test
suite. Supervised UNets do not depend on the generator: once trained for a resolution and budget
they are reused from WORK/real_cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from ganseg import bootstrap  # noqa: E402

bootstrap.install(ROOT)  # a tree other than the installed one (a copy, a test) adopts into itself

WEIGHTS = ROOT / "ganseg" / "weights"
SHIPPED = ("default_generator.safetensors", "default_discriminator.safetensors", "default_unet.safetensors")


@dataclass(frozen=True)
class AdoptBudget:
    """How much work the probe and the tables get (same seeds at every budget)."""
    probe_n: int = 2000
    n_test: int = 50
    n_test_unet: int = 1000
    n_heldout: int = 200        # held-out generated images (head / student vs the simulated annotator)
    invert_steps: int = 200     # protocol "inverted" rows
    head_steps: int = 0         # 0: scaled with the shots (autoshot_eval's recipe)
    head_seeds: int = 2
    synth_n: int = 3000
    unet_steps: int = 1000
    fewshot_heads: str = "linear,mlp,cnn"
    fewshot: bool = True        # rerun docs/fewshot.md's protocol (`ganseg eval`, generated shots)
    inverted: bool = True       # the second protocol's rows (inversions: the slow part)


BUDGETS = {
    "full": AdoptBudget(),
    "quick": AdoptBudget(probe_n=500, n_heldout=100, invert_steps=80, head_steps=600, head_seeds=1, synth_n=800,
                         unet_steps=400, fewshot=False, inverted=False),
    "tiny": AdoptBudget(probe_n=24, n_test=4, n_test_unet=8, n_heldout=3, invert_steps=2, head_steps=2, head_seeds=1,
                        synth_n=8, unet_steps=2, fewshot_heads="cnn"),
}


# --------------------------------------------------------------------------------------------
# 1. the probe and the decision

class AtResolution:
    """A generator whose images are area-resized to `resolution`: two generators of different
    resolutions are compared in one probe's feature space, at the lower resolution."""

    def __init__(self, G, resolution: int):
        self.G, self.resolution, self.z_dim = G, resolution, G.z_dim

    def synthesize(self, **kw):
        import torch.nn.functional as F

        img = self.G.synthesize(**kw)
        return img if img.shape[-1] == self.resolution else F.interpolate(img, size=self.resolution, mode="area")


def probe_pair(candidate, default, n: int, truncation_psi: float = 1.0) -> dict:
    """gan_quality of both generators on the same z seeds and the same noise, at the lower resolution."""
    import torch

    from ganseg.quality import gan_quality, load_probe, probe_path, save_probe, train_probe

    res = min(candidate.resolution, default.resolution)
    path = probe_path(res)
    if not path.is_file():  # first 128² pair: trained once into ganseg/weights, as `ganseg gan-quality` does
        save_probe(train_probe(res), path)
    probe = load_probe(path)
    out = {}
    for name, G in (("candidate", candidate), ("default", default)):
        torch.manual_seed(0)  # noise_mode="random": the same noise for both
        out[name] = gan_quality(AtResolution(G, res), n, truncation_psi, probe)
    return out


def decide(q: dict) -> tuple[bool, str]:
    """Better = a lower Fréchet distance and at least the same share of images with all parts."""
    c, d = q["candidate"], q["default"]
    fd_better = c["fd_generated_vs_rendered"] < d["fd_generated_vs_rendered"]
    parts_ok = c["parts_found_generated"] >= d["parts_found_generated"]
    text = (f"Fréchet distance {c['fd_generated_vs_rendered']:.3f} vs default {d['fd_generated_vs_rendered']:.3f} "
            f"(floor {d['fd_rendered_vs_rendered']:.3f}); parts found {100 * c['parts_found_generated']:.1f} % vs "
            f"{100 * d['parts_found_generated']:.1f} % (rendered {100 * d['parts_found_rendered']:.1f} %), "
            f"n = {c['n']} at {c['resolution']}²")
    if fd_better and parts_ok:
        return True, "better: " + text
    why = [w for w, bad in (("distance not lower", not fd_better), ("fewer images with all parts", not parts_ok)) if bad]
    return False, f"not better ({', '.join(why)}): " + text


# --------------------------------------------------------------------------------------------
# 2.-3. staging and the tables

def stage_weights(g_path: Path, d_path: Path, G, D, staging: Path) -> None:
    """Candidate G (EMA) and D as fp16 in the shipped format, with where they came from."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save

    from ganseg.checkpoints import save_generator
    from ganseg.images import write_atomic

    meta = {k: v for k, v in generator_meta(g_path).items() if k not in ("config", "format")} | {"adopted_from": str(g_path)}
    save_generator(G, staging / "default_generator.safetensors", dtype=torch.float16, extra_metadata=meta)
    with safe_open(str(d_path), framework="pt") as f:
        d_meta = dict(f.metadata() or {})
    d_state = {k: v.to(torch.float16).contiguous() for k, v in D.state_dict().items()}
    write_atomic(staging / "default_discriminator.safetensors", save(d_state, metadata=d_meta))


def run_checked(name: str, cmd: list[str], log: Path) -> subprocess.Popen:
    print(f"[adopt] {name}: {' '.join(map(str, cmd))} (log {log})", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # two workers share 2 cores
    return subprocess.Popen(list(map(str, cmd)), cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def wait_all(procs: dict[str, subprocess.Popen], logs: Path) -> None:
    failed = [name for name, p in procs.items() if p.wait() != 0]
    if failed:
        tails = "\n".join(f"--- {n}:\n" + (logs / f"{n}.log").read_bytes()[-2000:].decode(errors="replace")
                          for n in failed)
        raise RuntimeError(f"{', '.join(failed)} failed; nothing was adopted\n{tails}")


def autoshot_dir(work: Path, b: AdoptBudget, staging: Path) -> Path:
    """autoshot_eval's working folder for this candidate and budget: its finished jobs are reused
    only by a rerun of the same adoption (its settings stamp names the staged path, the same for
    every candidate)."""
    g = hashlib.sha256((staging / "default_generator.safetensors").read_bytes()).hexdigest()[:12]
    key = hashlib.sha256(json.dumps(asdict(b), sort_keys=True).encode()).hexdigest()[:8]
    return work / f"autoshot-{g}-{key}"


def autoshot_cmd(b: AdoptBudget, staging: Path, work: Path, jobs: str) -> list:
    return [sys.executable, "-m", "ganseg.bootstrap", "benchmarks/autoshot_eval.py", "--jobs", jobs,
            "--out", autoshot_dir(work, b, staging), "--results", staging / "results",
            "--ckpt", staging / "default_generator.safetensors",
            "--discriminator", staging / "default_discriminator.safetensors",
            "--n-test", b.n_test, "--n-test-unet", b.n_test_unet, "--n-heldout", b.n_heldout,
            "--invert-steps", b.invert_steps, "--head-steps", b.head_steps, "--head-seeds", b.head_seeds,
            "--synth-n", b.synth_n, "--unet-steps", b.unet_steps]


def real_cache(work: Path, b: AdoptBudget, resolution: int) -> Path:
    """Supervised UNets depend on the resolution and the UNet recipe only, not on the generator."""
    key = json.dumps({"res": resolution, "steps": b.unet_steps}, sort_keys=True)
    return work / "real_cache" / hashlib.sha256(key.encode()).hexdigest()[:12]


def fewshot_stage(plan: dict) -> None:
    """`ganseg eval`'s protocol (linear/MLP/CNN heads on generated shots, vs the simulated annotator)."""
    from ganseg.checkpoints import load_generator
    from ganseg.training.eval_protocol import EvalConfig, run_generated_protocol

    G = load_generator(plan["G"])
    cfg = EvalConfig(heads=tuple(plan["heads"].split(",")), n_test=plan["n_test"], n_heldout=plan["n_heldout"])
    run_generated_protocol(G, cfg, Path(plan["out"]), head_steps=plan["head_steps"])


def tables(b: AdoptBudget, staging: Path, work: Path, resolution: int) -> None:
    """Two processes at a time, one per core. First the annotator, the heads and the 10-shot
    students beside the few-shot protocol, the supervised UNets, the oracle and the pixel baselines;
    then the 1-shot students beside the 5-shot ones and the inverted protocol's rows; then the table."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs = autoshot_dir(work, b, staging)
    runs.mkdir(parents=True, exist_ok=True)
    cache = real_cache(work, b, resolution)
    todo = []
    for n in (1000, 100, 10):
        cached = cache / f"unet_real_n{n}"
        if (cached / "unet.safetensors").is_file():
            shutil.copytree(cached, runs / f"unet_real_n{n}", dirs_exist_ok=True)
            # its scores against held-out *generated* images belong to the generator that made them
            (runs / f"unet_real_n{n}" / "scores.json").unlink(missing_ok=True)
        else:
            todo.append(f"real{n}")
    plan = {"G": str(staging / "default_generator.safetensors"), "D": str(staging / "default_discriminator.safetensors"),
            "heads": b.fewshot_heads, "n_test": b.n_test, "invert_steps": b.invert_steps,
            "head_steps": b.head_steps, "n_heldout": b.n_heldout, "out": str(staging / "results")}
    (work / "fewshot_plan.json").write_text(json.dumps(plan))
    procs = {"heads": run_checked("heads", autoshot_cmd(b, staging, work, "annotator,heads,auto10"), logs / "heads.log")}
    second = [autoshot_cmd(b, staging, work, ",".join(todo + ["oracle", "genshots"]))]
    if b.fewshot:
        second.insert(0, [sys.executable, Path(__file__).resolve(), "--stage", "fewshot", "--plan",
                          work / "fewshot_plan.json"])
    if second:
        line = " && ".join(shlex.join(map(str, cmd)) for cmd in second)
        procs["fewshot_real"] = run_checked("fewshot_real", ["bash", "-c", line], logs / "fewshot_real.log")
    wait_all(procs, logs)
    inverted = ",inv-heads,inv-auto10" if b.inverted else ""
    wait_all({"auto1": run_checked("auto1", autoshot_cmd(b, staging, work, "auto1"), logs / "auto1.log"),
              "auto5": run_checked("auto5", autoshot_cmd(b, staging, work, "auto5" + inverted), logs / "auto5.log")},
             logs)
    for n in (10, 100, 1000):
        if not (cache / f"unet_real_n{n}" / "unet.safetensors").is_file():
            shutil.copytree(runs / f"unet_real_n{n}", cache / f"unet_real_n{n}", dirs_exist_ok=True)
    wait_all({"table": run_checked("table", autoshot_cmd(b, staging, work, "table"), logs / "table.log")}, logs)
    # the default UNet: the shipped recipe's final 10-shot student (self-training included), head seed 0
    settings = json.loads((runs / "settings.json").read_text())
    final = runs / f"unet_a{settings['self_train'] + 1}_k10_h0"
    shutil.copyfile(final / "unet.safetensors", staging / "default_unet.safetensors")


# --------------------------------------------------------------------------------------------
# 4. cards and figures

def sub_line(text: str, pattern: str, repl: str, what: str, missing: list[str]) -> str:
    """Replace the first match of `pattern` (MULTILINE and DOTALL, so a sentence may cross lines;
    one-line patterns say `[^\n]*$`); note it in `missing` when absent."""
    new, n = re.subn(pattern, lambda m: repl, text, count=1, flags=re.M | re.S)
    if n == 0:
        missing.append(what)
    return new


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def unet_card_figures(unet_path: Path, b: AdoptBudget) -> dict:
    """The default UNet's per-class IoU on the first n_test_unet rendered test images."""
    from ganseg.evaluate import score_row
    from ganseg.faces import render_faces, split_seeds
    from ganseg.labels import CLASS_NAMES
    from ganseg.unet import load_unet, segment_with_unet

    unet = load_unet(unet_path)
    img, lab = render_faces(split_seeds("test", b.n_test_unet), resolution=unet.meta.get("resolution", 64))
    row = score_row("default UNet", 10, segment_with_unet(unet, img), lab, list(CLASS_NAMES))
    return {"row": row, "val_miou": unet.meta.get("val_miou"), "classes": list(CLASS_NAMES),
            "sha256": hashlib.sha256(unet_path.read_bytes()).hexdigest()}


def rewrite_docs(staging: Path, q1: dict, q07: dict, unet: dict, b: AdoptBudget, budget: str,
                 source: dict, missing: list[str]) -> dict[Path, str]:
    """New text of every card and figure the adoption changes (relative path -> text)."""
    new: dict[Path, str] = {}
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    c1, c07 = q1["candidate"], q07["candidate"]
    # docs/default_generator.md
    p = Path("docs/default_generator.md")
    t = (ROOT / p).read_text()
    t = sub_line(t, r"^\| Fréchet distance [^\n]*$",
                 f"| Fréchet distance to {thousands(c1['n'])} rendered val images, probe features | "
                 f"{c1['fd_generated_vs_rendered']:.2f} | {c07['fd_generated_vs_rendered']:.2f} | "
                 f"{c1['fd_rendered_vs_rendered']:.3f} (rendered test vs val) |", f"{p}: Fréchet row", missing)
    t = sub_line(t, r"^\| share of images where [^\n]*$",
                 f"| share of images where the probe finds skin, two eyes, nose and mouth | "
                 f"{pct(c1['parts_found_generated'])} | {pct(c07['parts_found_generated'])} | "
                 f"{pct(c1['parts_found_rendered'])} (rendered val) |", f"{p}: parts row", missing)
    t = sub_line(t, r"^`ganseg gan-quality --n \d+`", f"`ganseg gan-quality --n {c1['n']}`", f"{p}: command", missing)
    adopted = (f"**Adopted {today}** by `tools/adopt.py` (budget `{budget}`) from `{source['path']}`: "
               f"{source['summary']}. The recipe rows below describe the model it replaced where they differ.")
    if re.search(r"^\*\*Adopted ", t, flags=re.M):
        t = sub_line(t, r"^\*\*Adopted [^\n]*$", adopted, f"{p}: adopted line", missing)
    else:
        t = t.replace("\n\n", f"\n\n{adopted}\n\n", 1)
    new[p] = t
    new[Path("docs/default_generator_quality.json")] = json.dumps(c1, indent=2) + "\n"
    new[Path("docs/default_generator_quality_psi07.json")] = json.dumps(c07, indent=2) + "\n"
    # docs/default_unet.md
    p = Path("docs/default_unet.md")
    t = (ROOT / p).read_text()
    row, names = unet["row"], unet["classes"]
    val = f"{unet['val_miou']:.3f}" if unet["val_miou"] is not None else "–"
    t = sub_line(t, r"^\| agreement with the head [^\n]*$",
                 f"| agreement with the head on held-out synthesized images | val mIoU {val} |", f"{p}: val row", missing)
    t = sub_line(t, r"^\| \*\*rendered test split[^\n]*$",
                 f"| **rendered test split, {thousands(b.n_test_unet)} images (seeds 2 000 000–"
                 f"{thousands(2_000_000 + b.n_test_unet - 1)})** | **mIoU {row['miou']:.3f}** |", f"{p}: test row", missing)
    t = sub_line(t, r"^\| sha256 \|[^\n]*$", f"| sha256 | `{unet['sha256']}` |", f"{p}: sha256", missing)
    t = sub_line(t, r"^\| data \|[^\n]*$",
                 f"| data | {thousands(b.synth_n)} generated images (seeds 0–{b.synth_n - 1}, ψ = 1) labelled by the head "
                 f"(`ganseg synthesize`), plus the 10 annotated shots (half of the samples) |", f"{p}: data row", missing)
    t = sub_line(t, r"^\| training \|[^\n]*$",
                 f"| training | {thousands(b.unet_steps)} steps × 16, AdamW 2e-3 cosine, all augmentations on, class-weighted "
                 f"loss (`UNetTrainConfig` defaults) |", f"{p}: training row", missing)
    steps = b.head_steps or "2 000"
    t = sub_line(t, r"^\| teacher \|[^\n]*$",
                 f"| teacher | paper CNN head, {steps} steps, on 10 generated images (seeds 0–9, ψ = 1) painted by the "
                 f"simulated annotator (protocol generated, training/annotator.py) |", f"{p}: teacher row", missing)
    per_class = ", ".join(f"{n} {row['iou'][n]:.3f}" for n in names)
    t = sub_line(t, r"^Per-class IoU on those [\d ]+ test images: .*?\b" + names[-1] + r" [\d.]+\.",
                 f"Per-class IoU on those {thousands(b.n_test_unet)} test images: {per_class}.",
                 f"{p}: per-class sentence", missing)
    new[p] = t
    # docs/fewshot.md: the table, or a note that this budget did not rerun it
    p = Path("docs/fewshot.md")
    t = (ROOT / p).read_text()
    if not b.fewshot:
        note = (f"**Not rerun for the generator adopted {today}** (`{budget}` budget of tools/adopt.py): the table "
                f"below is the previous generator's; the 10-shot CNN head's figures for the new one are in the loss "
                f"ladder of benchmarks/results/autoshot_eval.md (same shots and protocol).")
        if re.search(r"^\*\*Not rerun for ", t, flags=re.M):
            t = sub_line(t, r"^\*\*Not rerun for [^\n]*$", note, f"{p}: note", missing)
        else:
            t = t.replace("\n\n", f"\n\n{note}\n\n", 1)
        new[p] = t
        return new | quality_tables(staging, missing)
    t = re.sub(r"^\*\*Not rerun for [^\n]*\n\n", "", t, flags=re.M)  # rerun now
    t = replace_block(t, "fewshot-table", (staging / "results" / "fewshot_eval.md").read_text(), f"{p}: table", missing)
    new[p] = t
    return new | quality_tables(staging, missing)


def replace_block(text: str, name: str, body: str, what: str, missing: list[str]) -> str:
    """The text between `<!-- ganseg:NAME -->` and `<!-- /ganseg:NAME -->` (generated content)."""
    pattern = rf"(<!-- ganseg:{re.escape(name)} -->\n).*?(\n<!-- /ganseg:{re.escape(name)} -->)"
    new, n = re.subn(pattern, lambda m: m.group(1) + body.strip() + m.group(2), text, count=1, flags=re.S)
    if n == 0:
        missing.append(what)
    return new


def autoshot_summary(ae: dict) -> str:
    """README's auto-shot table: the loss ladder's rungs and the baselines, 1/5/10 shots, 1 000 test images."""
    rows = {(r["family"], r["shots"]): r for r in ae["rows"]}
    f3 = lambda r: "–" if r is None else f"{r.get('miou_1000', r['miou']):.3f}"  # noqa: E731
    lines = ["| protocol generated, mIoU on 1 000 rendered test images | 1 shot | 5 shots | 10 shots |",
             "|---|---:|---:|---:|"]
    for fam, label in (("auto", "**auto-shot UNet** (GAN-free, shipped recipe)"),
                       ("genshots", "pixel baseline: UNet on the same annotated generated shots"),
                       ("oracle", "oracle: UNet on the same generated images painted by the annotator"),
                       ("annotator", "simulated annotator itself (teacher's ceiling)")):
        lines.append(f"| {label} | " + " | ".join(f3(rows.get((fam, k))) for k in (1, 5, 10)) + " |")
    inv = [rows.get(("invauto", k)) for k in (1, 5, 10)]
    if any(inv):
        lines.append("| protocol inverted: auto-shot UNet, rendered photos inverted as shots | "
                     + " | ".join(f3(r) for r in inv) + " |")
    sup = " / ".join(f3(rows.get(("real", n))) for n in (10, 100, 1000))
    lines.append(f"\nSupervised UNet on N = 10 / 100 / 1 000 rendered photos with exact masks: {sup}.\n")
    lines += ["Goals:", ""] + [f"- {k}: {v['value']:.3f} (goal {v['goal']}{', ' + v['class'] if 'class' in v else ''})"
                               f" — {'met' if v['met'] else '**not met**'}" for k, v in ae.get("goals", {}).items()]
    return "\n".join(lines)


def quality_tables(staging: Path, missing: list[str]) -> dict[Path, str]:
    """README's summary, docs/autoshot.md's full table and the README status figure."""
    ae = json.loads((staging / "results" / "autoshot_eval.json").read_text())
    new = {}
    p = Path("README.md")
    t = replace_block((ROOT / p).read_text(), "autoshot-summary", autoshot_summary(ae), f"{p}: auto-shot summary", missing)
    rows = {(r["family"], r["shots"]): r for r in ae["rows"]}
    a10, g10 = rows.get(("auto", 10)), rows.get(("genshots", 10))
    if a10 and g10:
        t = sub_line(t, r"10-shot auto-shot mIoU [\d.]+ vs [\d.]+ for a UNet on the same shots",
                     f"10-shot auto-shot mIoU {a10['miou_1000']:.3f} vs {g10['miou_1000']:.3f} for a UNet on the same shots",
                     f"{p}: status figures", missing)
    new[p] = t
    p = Path("docs/autoshot.md")
    new[p] = replace_block((ROOT / p).read_text(), "autoshot-table", (staging / "results" / "autoshot_eval.md").read_text(),
                           f"{p}: table", missing)
    return new


def samples_png(G_path: Path, dest: Path) -> None:
    """docs/default_generator_samples.png as its card says: seeds 0-31, truncation 0.7."""
    import torch

    from ganseg.checkpoints import load_generator
    from ganseg.images import make_grid, save_png, to_uint8
    from ganseg.sample import z_from_seeds

    G = load_generator(G_path)
    with torch.no_grad():
        img = G.synthesize(z=z_from_seeds(list(range(32)), G.z_dim), truncation_psi=0.7, noise_mode="const")
    save_png(dest, make_grid(to_uint8(img), ncols=8))


# --------------------------------------------------------------------------------------------
# 5. the swap

def swap_in(staging: Path, docs: dict[Path, str], work: Path) -> list[str]:
    """Every staged file into place with os.replace; replaced files kept under WORK/replaced/.
    All new files are written beside their targets first, so the replaces at the end cannot fail
    for want of space or a missing folder."""
    from ganseg.images import write_atomic

    moves: list[tuple[Path, Path]] = [(staging / n, WEIGHTS / n) for n in SHIPPED]
    moves += [(p, ROOT / "benchmarks" / "results" / p.name) for p in sorted((staging / "results").iterdir())
              if p.is_file() and not p.name.endswith(".json.tmp")]
    moves.append((staging / "default_generator_samples.png", ROOT / "docs" / "default_generator_samples.png"))
    backup = work / "replaced"
    pending: list[tuple[Path, Path]] = []
    for src, dst in moves:
        tmp = dst.with_name(f".{dst.name}.adopt-tmp")
        shutil.copyfile(src, tmp)
        pending.append((tmp, dst))
    for rel, text in docs.items():
        tmp = (ROOT / rel).with_name(f".{rel.name}.adopt-tmp")
        write_atomic(tmp, text.encode())
        pending.append((tmp, ROOT / rel))
    for _, dst in pending:
        if dst.is_file():
            (backup / dst.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(dst, backup / dst.relative_to(ROOT))
    for tmp, dst in pending:
        os.replace(tmp, dst)
    return [str(dst.relative_to(ROOT)) for _, dst in pending]


# --------------------------------------------------------------------------------------------
# driver

def generator_meta(g_path: Path) -> dict:
    """A ganseg generator file's metadata, decoded (config, and what export_bundle recorded)."""
    from ganseg import tagged
    from ganseg.checkpoints import GANSEG_FORMAT

    return tagged.read_meta(g_path, GANSEG_FORMAT, what="ganseg generator")


def describe_source(g_path: Path) -> dict:
    meta = generator_meta(g_path)
    parts = []
    if meta.get("images_seen"):
        parts.append(f"{int(meta['images_seen']) / 1000:.1f} k images seen in its last run")
    if meta.get("step"):
        parts.append(f"step {meta['step']}")
    if meta.get("train_minutes"):
        parts.append(f"{meta['train_minutes']} min of training")
    if meta.get("train_config"):
        cfg = meta["train_config"]
        cfg = json.loads(cfg) if isinstance(cfg, str) else cfg
        parts.append(f"{cfg.get('resolution')}², batch {cfg.get('batch')}, augment {cfg.get('augment')}"
                     + (f", warm-started from {', '.join(Path(p).name for p in cfg['init'])}" if cfg.get("init") else ""))
    return {"path": str(g_path), "summary": "; ".join(parts) or "no training metadata"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("G", nargs="?", help="candidate generator .safetensors (ganseg format, e.g. export_bundle's), "
                                        "or a train-gan run folder (its checkpoint's EMA generator + D)")
    p.add_argument("D", nargs="?", help="its discriminator .safetensors (not with a run folder)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    p.add_argument("--work", default="runs/adopt", help="working folder (tables' runs, logs, replaced files)")
    p.add_argument("--dry-run", action="store_true", help="do everything but the swap; print what would change")
    p.add_argument("--probe-only", action="store_true", help="the probe and its verdict only (minutes)")
    p.add_argument("--rewrite-docs", action="store_true",
                   help="no adoption: rewrite the generated blocks of README.md, docs/autoshot.md and docs/fewshot.md "
                        "from benchmarks/results/ (after rerunning benchmarks/autoshot_eval.py or `ganseg eval`)")
    p.add_argument("--stage", choices=["fewshot"], help=argparse.SUPPRESS)
    p.add_argument("--plan", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage == "fewshot":
        fewshot_stage(json.loads(Path(args.plan).read_text()))
        return 0
    if args.rewrite_docs:
        return rewrite_result_docs()
    from ganseg.errors import BadInput, UserError, one_line

    try:
        work = ROOT / args.work
        if args.G and Path(args.G).is_dir() and not args.D:
            g_path, d_path = from_run(Path(args.G), work / "candidate")
        elif args.G and args.D:
            g_path, d_path = Path(args.G).resolve(), Path(args.D).resolve()
        else:
            raise BadInput("pass the candidate generator and its discriminator (tools/adopt.py G.safetensors "
                           "D.safetensors) or a train-gan run folder (tools/adopt.py runs/NAME)")
        return adopt(g_path, d_path, args.budget, work, args.dry_run, args.probe_only)
    except UserError as exc:
        print(f"adopt: error: {one_line(str(exc))}", file=sys.stderr)
        return 2


def rewrite_result_docs() -> int:
    """The generated blocks of the docs from the committed results (atomic writes; reports misses)."""
    from ganseg.images import write_atomic

    missing: list[str] = []
    new = quality_tables(ROOT / "benchmarks", missing)
    p = Path("docs/fewshot.md")
    fs = ROOT / "benchmarks" / "results" / "fewshot_eval.md"
    if fs.is_file():
        new[p] = replace_block((ROOT / p).read_text(), "fewshot-table", fs.read_text(), f"{p}: table", missing)
    for rel, text in new.items():
        write_atomic(ROOT / rel, text.encode())
    print(f"rewrote {', '.join(map(str, new))}" + (f"; not found: {'; '.join(missing)}" if missing else ""))
    return 1 if missing else 0


def from_run(run: Path, dest: Path) -> tuple[Path, Path]:
    """A train-gan run folder's checkpoint as the shipped pair (export_bundle: EMA generator + D, fp16)."""
    from ganseg.errors import MissingFile
    from ganseg.training.train_gan import export_bundle

    if not (run / "checkpoint.pt").is_file():
        raise MissingFile(f"{run}: no checkpoint.pt; pass a train-gan run folder or G and D .safetensors files")
    dest.mkdir(parents=True, exist_ok=True)
    g_path, d_path = export_bundle(run, dest)
    print(f"[adopt] exported {run}/checkpoint.pt -> {g_path}, {d_path}", flush=True)
    return g_path.resolve(), d_path.resolve()


def adopt(g_path: Path, d_path: Path, budget: str, work: Path, dry_run: bool = False, probe_only: bool = False) -> int:
    import ganseg
    from ganseg.checkpoints import load_generator
    from ganseg.training.train_gan import load_init

    if Path(ganseg.__file__).resolve().parent != ROOT / "ganseg":
        raise RuntimeError(f"ganseg imports from {ganseg.__file__}, not from this tree {ROOT}: refusing to adopt")
    b = BUDGETS[budget]
    t0 = time.time()
    # the same checks as train-gan --init: files exist, D fits G, G is a ganseg-trained generator
    G, D = load_init(argparse.Namespace(init=[str(g_path), str(d_path)], res=None, z_dim=None,
                                        mapping_layers=None, channels=None))
    default = load_generator()
    work.mkdir(parents=True, exist_ok=True)
    print(f"[adopt] probe: {g_path.name} vs the bundled default, n = {b.probe_n}", flush=True)
    q1 = probe_pair(G, default, b.probe_n)
    better, verdict = decide(q1)
    (work / "probe.json").write_text(json.dumps({"candidate_file": str(g_path), "budget": budget, "verdict": verdict,
                                                 **q1}, indent=1) + "\n")
    print(f"[adopt] probe ({time.time() - t0:.0f} s): {verdict}", flush=True)
    if not better or probe_only:
        print("[adopt] not adopted; nothing changed." if not better else "[adopt] --probe-only: nothing changed.")
        return 0
    staging = work / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "results").mkdir(parents=True)
    try:
        stage_weights(g_path, d_path, G, D, staging)
        t1 = time.time()
        tables(b, staging, work, G.resolution)
        print(f"[adopt] tables: {time.time() - t1:.0f} s", flush=True)
        # second gate: what ships must not get worse. A short budget's UNet (fewer steps, less data)
        # can lose to the shipped one even when the generator is better.
        unet = unet_card_figures(staging / "default_unet.safetensors", b)
        shipped = unet_card_figures(WEIGHTS / "default_unet.safetensors", b)
        new_miou, old_miou = unet["row"]["miou"], shipped["row"]["miou"]
        if new_miou < old_miou:
            verdict += (f"; but its 10-shot auto-shot UNet scores mIoU {new_miou:.3f} on {b.n_test_unet} test images, "
                        f"below the shipped default UNet's {old_miou:.3f}")
            (work / "adopt.json").write_text(json.dumps({"verdict": verdict, "budget": budget, "adopted": False,
                                                         "seconds": round(time.time() - t0)}, indent=1) + "\n")
            print(f"[adopt] not adopted: {verdict}; nothing changed (the `full` budget trains the UNet as the "
                  f"shipped one was; staged files: {staging})")
            return 0
        q07 = probe_pair(G, default, b.probe_n, truncation_psi=0.7)
        samples_png(staging / "default_generator.safetensors", staging / "default_generator_samples.png")
        missing: list[str] = []
        docs = rewrite_docs(staging, q1, q07, unet, b, budget, describe_source(g_path), missing)
        summary = {"verdict": verdict, "budget": budget, "adopted": not dry_run, "seconds": round(time.time() - t0),
                   "default_unet_miou": new_miou, "replaced_unet_miou": old_miou, "not_rewritten": missing}
        (work / "adopt.json").write_text(json.dumps(summary, indent=1) + "\n")
        if dry_run:
            print(f"[adopt] dry run: staged in {staging}; would rewrite {', '.join(map(str, docs))}")
            return 0
        changed = swap_in(staging, docs, work)
    except BaseException:
        print(f"[adopt] failed; ganseg/weights, docs and results are unchanged (staging: {staging})", file=sys.stderr)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    print(f"[adopt] adopted in {time.time() - t0:.0f} s; changed: {', '.join(changed)}")
    if missing:
        print(f"[adopt] not found, update by hand: {'; '.join(missing)}")
    print("[adopt] figures and tables are rewritten, words are not: reread the prose around them "
          "(README status and auto-shot paragraph, the cards' descriptions of the generator)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
