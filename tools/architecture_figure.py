"""Draw docs/architecture.png: ganseg's pipeline end to end and its rooms' one direction of imports.

    python tools/architecture_figure.py [--out docs/architecture.png]

Why a script: the picture in docs/architecture.md must follow the code; when a stage, a room or an
artifact changes, edit the tables below and rerun (matplotlib only, no graph-layout tool). The
room of each stage is the module its command runs (`ganseg.cli.COMMANDS`), checked at draw time,
and the import arrows are the ones tests/test_layering.py allows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROOM_COLOURS = {
    "core": "#d9e8f5", "training": "#fde3c8", "export": "#dff0d8", "serving": "#efe0f5",
    "benchmarks": "#f2f2f2", "entry": "#fff6bf", "artifact": "#ffffff",
}

# (command, room, what it does) in pipeline order, then what goes from each stage to the next
STAGES = [
    ("sample", "core", "GAN images +\nlatents"),
    ("annotate", "core", "paint masks in the\nbrowser; Propose fits\na head (ganseg.headfit)"),
    ("train-head", "training", "few-shot head on\ngenerator features"),
    ("synthesize", "core", "GAN images labelled\nby the head, in shards"),
    ("train-unet", "training", "distil a GAN-free\nUNet"),
    ("export", "export", "ONNX / TensorRT /\nTriton repository"),
    ("serve", "serving", "Triton Inference\nServer + client"),
    ("bench", "benchmarks", "perf_analyzer and\nin-process baselines"),
]
ARTIFACTS = [
    "seedNNNN.png\nlatents.safetensors",
    "seedNNNN_mask.png\nlabels.json",
    "head.safetensors",
    "ds/ shards +\nindex.json",
    "unet/unet.safetensors",
    "model.onnx +\nmodel_repository/",
    "served model\n(HTTP / gRPC)",
]
COMMAND_OF = {"serve": "serve", "bench": None}  # bench is `make bench` (benchmarks/bench.py), not a command


def check_rooms() -> None:
    """The picture's rooms are the ones the commands' modules live in."""
    sys.path.insert(0, str(ROOT))
    from ganseg.cli import COMMANDS

    for name, room, _ in STAGES:
        command = COMMAND_OF.get(name, name)
        if command is None:
            continue
        module = COMMANDS[command][0]
        actual = next((r for r in ("training", "export", "serving") if module.startswith(f"ganseg.{r}")), "core")
        if actual != room:
            raise SystemExit(f"stage {name}: its command runs {module} (room {actual}), the figure says {room}")


def box(ax, x, y, w, h, text, colour, bold_first=False, fontsize=9, style="round,pad=0.02,rounding_size=0.06"):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=colour, edgecolor="#444444", lw=1.0))
    if bold_first:
        head, _, rest = text.partition("\n")
        ax.text(x + w / 2, y + h - 0.16, head, ha="center", va="top", fontsize=fontsize + 1.5, weight="bold")
        ax.text(x + w / 2, y + (h - 0.3) / 2, rest, ha="center", va="center", fontsize=fontsize)
    else:
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, a, b, colour="#333333", lw=1.4, style="-|>", ls="-"):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=14, color=colour, lw=lw, linestyle=ls,
                                 shrinkA=2, shrinkB=2))


def draw(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(17, 10.5), dpi=110)
    # ---------------------------------------------------------------- the pipeline
    ax = fig.add_axes((0.01, 0.52, 0.98, 0.46))
    ax.set_xlim(0, 17)
    ax.set_ylim(0, 4.6)
    ax.axis("off")
    ax.text(0.1, 4.45, "the pipeline: sample \u2192 annotate \u2192 train-head \u2192 synthesize \u2192 train-unet "
            "\u2192 export \u2192 serve \u2192 bench", fontsize=13, weight="bold", va="top")
    w, h, gap, y = 1.72, 1.55, 0.37, 2.0
    xs = [0.15 + i * (w + gap) for i in range(len(STAGES))]
    for x, (name, room, what) in zip(xs, STAGES):
        label = f"ganseg {name}" if COMMAND_OF.get(name, name) else "make bench"
        box(ax, x, y, w, h, f"{label}\n{what}", ROOM_COLOURS[room], bold_first=True, fontsize=8.5)
        ax.text(x + w / 2, y - 0.12, f"{room}/" if room != "core" else "ganseg/ (core)", ha="center", va="top",
                fontsize=8, style="italic", color="#555555")
    for i, art in enumerate(ARTIFACTS):
        a, b = (xs[i] + w, y + h / 2), (xs[i + 1], y + h / 2)
        arrow(ax, a, b)
        ax.text((a[0] + b[0]) / 2, y + h + 0.12, art, ha="center", va="bottom", fontsize=7.3, color="#222222",
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="#bbbbbb", lw=0.6))
    # the GAN-free shortcut and the in-process path
    ax.text(xs[5], 0.95, "without a server: ganseg segment --unet (core, the same ganseg.pipeline the server runs)",
            fontsize=8.5, color="#333333")
    arrow(ax, (xs[4] + w / 2, y - 0.45), (xs[5] - 0.05, 1.02), colour="#777777", ls="--")
    ax.text(xs[0], 0.95, "inputs: a StyleGAN2 generator (bundled default, rosinality .pt, NVlabs .pkl) "
            "- or ganseg train-gan (training/)", fontsize=8.5, color="#333333")
    ax.text(xs[0], 0.5, "tools/: adopt.py (a better generator becomes the default: probe, re-distil, rerun the tables), "
            "gpu_pass.py (the GPU run), perf_analyzer/ (NVIDIA's load generator)", fontsize=8.5, color="#333333")

    # ---------------------------------------------------------------- the rooms
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.49))
    ax.set_xlim(0, 17)
    ax.set_ylim(0, 5.2)
    ax.axis("off")
    ax.text(0.1, 5.1, "the rooms: imports go one way (tests/test_layering.py)", fontsize=13, weight="bold", va="top")
    core = (3.0, 0.25, 8.6, 1.05)
    training = (3.0, 1.95, 2.7, 1.05)
    export = (6.45, 1.95, 2.7, 1.05)
    serving = (8.9, 3.35, 2.7, 1.05)
    entry = (3.0, 3.55, 3.3, 0.85)
    repo = (12.4, 2.0, 2.25, 0.95)
    bench = (12.4, 3.6, 4.3, 0.95)
    tools = (12.4, 0.3, 4.3, 0.95)
    box(ax, *core, "ganseg/ (the core, a library + its own commands)\nstylegan2, checkpoints, heads, headfit, latents, "
        "shots, labels, pipeline, unet, ops,\npaths, argtypes, subcommands; sample, render, annotate/, invert, segment, "
        "synthesize, score", ROOM_COLOURS["core"], fontsize=8.3)
    box(ax, *training, "training/  (ganseg.training)\ntrain-gan, train-head, train-unet,\neval (+ simulated annotator)",
        ROOM_COLOURS["training"], fontsize=8.3)
    box(ax, *export, "export/  (ganseg.export)\nexport onnx | tensorrt | triton,\nlabeler, quantize, repository writer",
        ROOM_COLOURS["export"], fontsize=8.3)
    box(ax, *serving, "serving/  (ganseg.serving)\nserve, client, Triton models\n(TritonPythonModel classes)",
        ROOM_COLOURS["serving"], fontsize=8.3)
    box(ax, *entry, "ganseg.cli: the entry point\nits table names every room's commands;\nnothing imports it",
        ROOM_COLOURS["entry"], fontsize=8.3)
    box(ax, *repo, "model_repository/\nconfig.pbtxt, model.onnx,\nmodel.py stubs", ROOM_COLOURS["artifact"], fontsize=8.3,
        style="square,pad=0.02")
    box(ax, *bench, "benchmarks/: make bench, autoshot_eval, ...\nuse any room (measurement code lives here)",
        ROOM_COLOURS["benchmarks"], fontsize=8.3)
    box(ax, *tools, "tools/: adopt.py, gpu_pass.py, perf_analyzer/,\narchitecture_figure.py (this picture)",
        ROOM_COLOURS["benchmarks"], fontsize=8.3)

    def top(b, f=0.5):
        return (b[0] + b[2] * f, b[1] + b[3])

    def bottom(b, f=0.5):
        return (b[0] + b[2] * f, b[1])

    arrow(ax, bottom(training), top(core, 0.16))
    arrow(ax, bottom(export), top(core, 0.56))
    arrow(ax, bottom(serving, 0.7), top(core, 0.93))
    arrow(ax, (serving[0], serving[1] + 0.3), (export[0] + export[2], export[1] + export[3] * 0.7))
    ax.text(serving[0] - 0.35, serving[1] - 0.05, "serving may\nimport export", fontsize=7.5, ha="right",
            color="#333333")
    for b, f in ((training, 0.5), (export, 0.5)):  # entry names the commands of every room (strings, lazily)
        arrow(ax, bottom(entry, 0.5 if b is training else 0.9), top(b, f), colour="#999999", ls=":")
    arrow(ax, (entry[0] + entry[2], entry[1] + entry[3] * 0.6), (serving[0], serving[1] + serving[3] * 0.6),
          colour="#999999", ls=":")
    arrow(ax, (entry[0], entry[1] + 0.2), (core[0] - 0.1, core[1] + core[3] * 0.8), colour="#999999", ls=":")
    ax.text(0.15, 2.55, "dotted: ganseg.cli's command\ntable (lazy, by module name)\nsolid: imports; "
            "nothing else:\nno upward or sideways arrow,\nno file circle", fontsize=8, color="#333333")
    arrow(ax, (export[0] + export[2], export[1] + 0.35), (repo[0], repo[1] + 0.35), colour="#2e7d32")
    ax.text(10.6, 2.45, "writes", fontsize=7.5, color="#2e7d32")
    arrow(ax, (repo[0] + 0.4, repo[1] + repo[3]), (serving[0] + serving[2], serving[1] + 0.3), colour="#6a1b9a")
    ax.text(12.0, 3.15, "serves", fontsize=7.5, color="#6a1b9a")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "architecture.png")
    args = ap.parse_args(argv)
    check_rooms()
    draw(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
