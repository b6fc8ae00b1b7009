"""`make bench`: every latency/throughput/memory benchmark of the deployment path, one command.

Why one driver: the figures only compare when they come from one run on one machine — the served
UNet (NVIDIA's perf_analyzer against the real Triton server), the in-process baselines on the same
network and threads, the fused feature step's memory, synthesis throughput and the GPU rows — and
the ratios that matter are computed from them in one place:

- served img/s ÷ in-process img/s at the same batch (goal >= 0.85): the network model
  `ganseg_unet` at client batch B vs ONNX Runtime in-process at batch B; and the image-bytes entry
  point at concurrency B (the server's batcher can form batches of B) vs the same pipeline
  in-process at batch B;
- p99 ÷ p50 latency at concurrency 8 (goal <= 2), per entry point and protocol;
- the pre/post-processing share of served compute and latency (from the server's statistics).

Output (benchmarks/results/ by default), `<host>-<date>` named so runs on other machines sit side
by side: `.json` (everything, with the environment record), `.md` (tables + ratios vs goals),
`-perf_analyzer.csv` (perf_analyzer's own -f CSV, all points), and three plots: `-latency.png`
(percentiles vs concurrency), `-throughput.png` (img/s vs concurrency, served vs in-process) and
`-memory.png` (fused vs materialized peak memory vs resolution, log scale).

    make bench                                  # the whole thing, <= 15 min on 2 CPU cores
    python benchmarks/bench.py --quick --out DIR  # seconds: a tiny grid (the test suite's smoke run)
    python benchmarks/bench.py --sections served,inprocess

The grid is trimmed to fit 15 minutes on a 2-core CPU (see `BenchConfig.default`); `--full` runs
every point of every section.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fused_memory  # noqa: E402
import gpu  # noqa: E402
import inprocess  # noqa: E402
import scaling  # noqa: E402
import served  # noqa: E402
import synthesis_throughput  # noqa: E402
import train_throughput  # noqa: E402
from common import (RESULTS, environment, environment_markdown, loaded_note, markdown_table, pyplot,  # noqa: E402
                    result_stem, save_figure, write_json, write_text)

SECTIONS = ("served", "inprocess", "realsize", "fused", "synthesis", "train", "scaling", "gpu")
GOALS = {"served_over_inprocess": 0.85, "p99_over_p50_c8": 2.0}


@dataclass
class BenchConfig:
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    unet: str | None = None                   # UNet run/file; None: bundled default
    threads: int | None = None                # in-process threads; None: the server's ORT threads
    # served
    protocols: list[str] = field(default_factory=lambda: list(served.PROTOCOLS))
    concurrency: list[int] = field(default_factory=lambda: list(served.CONCURRENCY))
    short_concurrency: list[int] | None = field(default_factory=lambda: [1, 8])
    unet_batches: list[int] = field(default_factory=lambda: list(served.UNET_BATCHES))
    requests_per_window: int = 10
    # in-process
    sizes: list[int] | None = None            # None: training size, 256, 512
    batches: list[int] = field(default_factory=lambda: list(inprocess.BATCHES))
    engines: list[str] = field(default_factory=lambda: list(inprocess.ENGINES))
    pipeline_batches: list[int] = field(default_factory=lambda: [1, 4, 8])
    inprocess_repeats: int = 3
    inprocess_min_seconds: float = 0.5
    compile_budget_s: float | None = 90.0
    # fused feature step
    fused_cases: list[str] = field(default_factory=lambda: list(fused_memory.BENCH_CASES))
    fused_heads: list[str] = field(default_factory=lambda: ["linear"])
    fused_modes: list[str] = field(default_factory=lambda: ["infer"])
    # synthesis
    synthesis_quick: bool = True
    synthesis_heads: list[str] = field(default_factory=lambda: ["linear", "cnn"])
    synthesis_repeats: int = 3
    # GAN training steps (train_throughput.py; a CUDA row per resolution when a GPU is present)
    train_quick: bool = False
    # data-parallel scaling under torchrun, 1 vs 2 CPU ranks (scaling.py; ~1 min on 2 cores)
    scaling_quick: bool = False
    quick: bool = False

    @classmethod
    def smoke(cls) -> "BenchConfig":
        """Seconds, not minutes: a tiny grid through every code path (tests/test_benchmarks.py)."""
        return cls(sections=["inprocess", "gpu"], engines=["torch eager", "onnxruntime"], sizes=[32],
                   batches=[1, 2], pipeline_batches=[1], inprocess_repeats=2, inprocess_min_seconds=0.0,
                   quick=True)

    @classmethod
    def full(cls) -> "BenchConfig":
        return cls(short_concurrency=None, compile_budget_s=None, fused_heads=["linear", "cnn"],
                   fused_modes=["train", "infer"], synthesis_quick=False, synthesis_heads=["linear", "mlp", "cnn"])


# --------------------------------------------------------------------------------------------
# Sections

def _unet_file(unet, about: str, path: str | None, tmp: Path) -> Path:
    """A .safetensors file of the UNet (the served repository is built from a file)."""
    from ganseg.unet import DEFAULT_UNET, save_unet

    if path is not None:
        p = Path(path)
        return p / "unet.safetensors" if p.is_dir() else p
    if DEFAULT_UNET.is_file() and about == "bundled default UNet":
        return DEFAULT_UNET
    f = tmp / "unet.safetensors"
    save_unet(unet, f, unet.class_names, extra={"resolution": int(unet.meta.get("resolution", 64))})
    return f


def run(cfg: BenchConfig, out: Path, log=print) -> dict:
    """Run the configured sections; write and return the result document."""
    t_start = time.perf_counter()
    env0 = environment()
    unet, about = inprocess.bench_unet(cfg.unet) if not cfg.quick else _tiny_unet()
    from ganseg.export.triton_repository import ServingConfig

    threads = cfg.threads or ServingConfig().ort_threads
    train_size = int(unet.meta.get("resolution", 64))
    doc: dict = {"config": asdict(cfg), "unet": about, "unet_resolution": train_size, "threads": threads,
                 "sections": {}, "section_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="ganseg-bench-") as tmp:
        tmp = Path(tmp)
        try:
            onnx_path = inprocess.export_for_bench(unet, tmp)
        except ImportError as exc:
            onnx_path = None
            log(f"no ONNX export ({exc}): ONNX rows are absent")
        png = inprocess.sample_png(256 if not cfg.quick else 64)
        for name in cfg.sections:
            t0 = time.perf_counter()
            log(f"[{name}]")
            if name == "served":
                pts = served.default_points(cfg.protocols, cfg.concurrency, cfg.unet_batches,
                                            short_concurrency=cfg.short_concurrency)
                sec = served.served_rows(_unet_file(unet, about, cfg.unet, tmp), png, tmp / "served", points=pts,
                                         settings=served.PerfSettings(requests_per_window=cfg.requests_per_window),
                                         log=log)
            elif name == "inprocess":
                sizes = cfg.sizes or sorted({train_size, 256, 512})
                # torch.compile in a child with a hard limit when budgeted (a compile cannot be interrupted)
                child = "torch.compile" in cfg.engines and cfg.compile_budget_s is not None
                engines = [e for e in cfg.engines if not (child and e == "torch.compile")]
                rows = inprocess.network_rows(unet, onnx_path, sizes=sizes, batches=cfg.batches, threads=threads,
                                              engines=engines, repeats=cfg.inprocess_repeats, warmup=1,
                                              min_seconds=cfg.inprocess_min_seconds,
                                              compile_budget_s=cfg.compile_budget_s, log=log)
                if child:
                    rows += inprocess.compile_rows_in_child(
                        _unet_file(unet, about, cfg.unet, tmp), sizes=sizes, batches=cfg.batches, threads=threads,
                        budget_s=cfg.compile_budget_s, work=tmp, repeats=cfg.inprocess_repeats, log=log)
                rows += inprocess.pipeline_rows(onnx_path, png, batches=cfg.pipeline_batches, threads=threads,
                                                repeats=cfg.inprocess_repeats, min_seconds=cfg.inprocess_min_seconds,
                                                log=log)
                sec = {"rows": rows, "threads": threads, "sizes": sizes}
            elif name == "realsize":  # real photo sizes, served vs in-process side by side (served.py)
                sec = served.real_size_section(_unet_file(unet, about, cfg.unet, tmp), onnx_path, tmp / "realsize",
                                               threads=threads, log=log,
                                               settings=served.PerfSettings(requests_per_window=cfg.requests_per_window))
            elif name == "fused":
                sec = {"rows": fused_memory.run_points(cfg.fused_cases, cfg.fused_heads, cfg.fused_modes,
                                                       features="random", log=log),
                       "features": "random tensors of the generator's feature shapes"}
            elif name == "synthesis":
                plan = synthesis_throughput.default_plan(quick=cfg.synthesis_quick)
                sec = {"rows": synthesis_throughput.measure_rows(plan, heads=cfg.synthesis_heads,
                                                                 repeats=cfg.synthesis_repeats, log=log)}
            elif name == "train":
                sec = {"rows": train_throughput.measure_rows(train_throughput.default_points(cfg.train_quick), log=log),
                       "recorded": train_throughput.RECORDED}
            elif name == "scaling":
                sec = scaling.measure(scaling.Plan.for_device("cpu", cfg.scaling_quick), log=log)
            elif name == "gpu":
                device = "cpu" if cfg.quick else None
                sec = {"rows": gpu.gpu_rows(unet if cfg.quick else None, onnx_path, device=device, quick=cfg.quick,
                                            log=log)}
                if cfg.quick:
                    sec["note"] = "smoke mode: GPU code paths run on the CPU"
            else:
                raise SystemExit(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
            doc["sections"][name] = sec
            doc["section_seconds"][name] = time.perf_counter() - t0
            log(f"[{name}] {doc['section_seconds'][name]:.0f} s")
    env = environment()
    served_sec = doc["sections"].get("served", {})
    env.update(tritonserver=served_sec.get("tritonserver"), perf_analyzer=served_sec.get("perf_analyzer"),
               load_avg_at_start=env0["load_avg_1_5_15"])
    doc["environment"] = env
    doc["ratios"] = ratios(doc)
    doc["total_seconds"] = time.perf_counter() - t_start
    write_outputs(doc, out)
    return doc


def _tiny_unet():
    import torch

    from ganseg.unet import UNet, UNetConfig

    torch.manual_seed(0)
    u = UNet(UNetConfig(num_classes=10, width=4, depth=2)).eval()
    u.class_names = [f"class{i}" for i in range(10)]
    u.meta = {"resolution": 32}
    return u, "tiny random UNet (width 4, depth 2, 32²): smoke run"


# --------------------------------------------------------------------------------------------
# Ratios

def _ok(rows):
    return [r for r in rows if r.get("status") == "ok"]


def ratios(doc: dict) -> dict:
    """The figures the issue sets goals for, each with its inputs (so a reader can check it)."""
    sv = _ok(doc["sections"].get("served", {}).get("rows", []))
    ip = _ok(doc["sections"].get("inprocess", {}).get("rows", []))
    size = doc["unet_resolution"]
    out: dict = {"served_over_inprocess": [], "p99_over_p50_c8": [], "prepost_share": []}
    ort = {r["batch"]: r for r in ip if r["engine"] == "onnxruntime" and r["size"] == size}
    for r in sv:
        if r["model"] == served.UNET_MODEL and r["batch"] in ort:
            i = ort[r["batch"]]
            out["served_over_inprocess"].append({
                "what": f"{served.UNET_MODEL} (network only) vs onnxruntime in-process", "protocol": r["protocol"],
                "batch": r["batch"], "served_img_s": r["img_per_s"], "inprocess_img_s": i["img_s"],
                "ratio": r["img_per_s"] / i["img_s"], "goal": GOALS["served_over_inprocess"]})
    pipe = {r["batch"]: r for r in ip if r["engine"].startswith("onnxruntime pipeline")}
    for r in sv:
        if r["model"] in served.ENTRIES and served.ENTRIES[r["model"]][0] == "bytes" and r["concurrency"] in pipe:
            i = pipe[r["concurrency"]]
            out["served_over_inprocess"].append({
                "what": f"{r['model']} at concurrency {r['concurrency']} vs the same pipeline in-process at batch "
                        f"{i['batch']}", "protocol": r["protocol"], "batch": i["batch"],
                "served_avg_batch": r.get("entry_avg_batch"), "served_img_s": r["img_per_s"],
                "inprocess_img_s": i["img_s"], "ratio": r["img_per_s"] / i["img_s"],
                "goal": GOALS["served_over_inprocess"]})
    for r in sv:
        if r["concurrency"] == 8 and r["model"] in served.ENTRIES:
            out["p99_over_p50_c8"].append({"model": r["model"], "protocol": r["protocol"], "p50_ms": r["p50_ms"],
                                           "p99_ms": r["p99_ms"], "ratio": r["p99_ms"] / r["p50_ms"],
                                           "requests": r.get("requests_measured"), "goal": GOALS["p99_over_p50_c8"]})
    for r in sv:
        if r["model"] in served.ENTRIES and r.get("prepost_share_of_compute") is not None and r["concurrency"] in (1, 8):
            out["prepost_share"].append({"model": r["model"], "protocol": r["protocol"], "concurrency": r["concurrency"],
                                         "prepost_ms": r["prepost_ms"], "net_ms": r["net_ms"],
                                         "share_of_compute": r["prepost_share_of_compute"],
                                         "share_of_latency": r.get("prepost_share_of_latency")})
    for r in ip:
        if r["engine"].startswith("onnxruntime pipeline"):
            out["prepost_share"].append({"model": "in-process pipeline", "protocol": "-", "concurrency": r["batch"],
                                         "prepost_ms": r["stage_ms"]["pre"] + r["stage_ms"]["post"],
                                         "net_ms": r["stage_ms"]["net"], "share_of_compute": r["prepost_share"],
                                         "share_of_latency": r["prepost_share"]})
    return out


# --------------------------------------------------------------------------------------------
# Writing

def write_outputs(doc: dict, out: Path) -> dict[str, Path]:
    env = doc["environment"]
    stem = result_stem(env)
    files = {}
    sv = doc["sections"].get("served", {})
    csv_text = sv.pop("csv", "") if sv else ""
    if csv_text:
        files["csv"] = write_text(out / f"{stem}-perf_analyzer.csv", csv_text)
        sv["csv_file"] = files["csv"].name
    rs = doc["sections"].get("realsize", {})
    if rs.get("csv"):
        files["realsize_csv"] = write_text(out / f"{stem}-realsize-perf_analyzer.csv", rs.pop("csv"))
        rs["csv_file"] = files["realsize_csv"].name
    plots = {"latency": plot_latency(doc, out / f"{stem}-latency.png"),
             "throughput": plot_throughput(doc, out / f"{stem}-throughput.png"),
             "memory": plot_memory(doc, out / f"{stem}-memory.png")}
    doc["plots"] = {k: v.name for k, v in plots.items() if v is not None}
    files["json"] = write_json(out / f"{stem}.json", doc)
    files["md"] = write_text(out / f"{stem}.md", markdown(doc))
    files.update({k: v for k, v in plots.items() if v is not None})
    return files


def _goal(v: float | None, goal: float, higher_is_better: bool) -> str:
    if v is None:
        return "–"
    met = v >= goal if higher_is_better else v <= goal
    return "met" if met else "**not met**"


def markdown(doc: dict) -> str:
    env = doc["environment"]
    parts = [f"# ganseg benchmarks: {env['host']}, {env['date'][:10]}\n", environment_markdown(env),
             f"\nUNet: {doc['unet']} (trained at {doc['unet_resolution']}²); in-process threads: {doc['threads']} "
             f"(the served `ganseg_unet`'s ONNX Runtime threads). Total run: {doc['total_seconds'] / 60:.1f} min "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in doc['section_seconds'].items())}).\n"]
    r = doc["ratios"]
    parts.append("\n## Ratios against the goals\n\n")
    if r["served_over_inprocess"]:
        parts.append(markdown_table(
            ["served ÷ in-process (goal ≥ 0.85)", "protocol", "batch", "served img/s", "in-process img/s", "ratio", "goal"],
            [[x["what"], x["protocol"], x["batch"], x["served_img_s"], x["inprocess_img_s"], f"{x['ratio']:.2f}",
              _goal(x["ratio"], x["goal"], True)] for x in r["served_over_inprocess"]],
            numeric=[False, False, True, True, True, True, False]))
    if r["p99_over_p50_c8"]:
        parts.append("\n" + markdown_table(
            ["p99 ÷ p50 at concurrency 8 (goal ≤ 2)", "protocol", "p50 ms", "p99 ms", "ratio", "requests", "goal"],
            [[x["model"], x["protocol"], x["p50_ms"], x["p99_ms"], f"{x['ratio']:.2f}", x["requests"],
              _goal(x["ratio"], x["goal"], False)] for x in r["p99_over_p50_c8"]],
            numeric=[False, False, True, True, True, True, False]))
    if r["prepost_share"]:
        parts.append("\n" + markdown_table(
            ["pre/post-processing share", "protocol", "concurrency / batch", "pre+post ms", "network ms",
             "share of compute", "share of latency"],
            [[x["model"], x["protocol"], x["concurrency"], x["prepost_ms"], x["net_ms"],
              f"{100 * x['share_of_compute']:.0f} %" if x["share_of_compute"] is not None else "–",
              f"{100 * x['share_of_latency']:.0f} %" if x.get("share_of_latency") is not None else "–"]
             for x in r["prepost_share"]], numeric=[False, False, True, True, True, True, True]))
    s = doc["sections"]
    if "served" in s:
        sec = s["served"]
        parts.append(f"\n## Served (perf_analyzer {sec.get('perf_analyzer')}, tritonserver {sec.get('tritonserver')})\n\n")
        if sec.get("settings"):
            st = sec["settings"]
            parts.append(f"Batch-1 requests unless stated; 3 count windows of at least {st['requests_per_window']} "
                         f"requests (and 2 per concurrent client) per point, after {st['warmup_requests']} warm-up "
                         f"requests per model; latency in ms. Server: `ganseg export triton --pipeline both` "
                         f"defaults ({_serving_line(sec.get('serving_config'))}). CSV: `{sec.get('csv_file', '–')}`.\n\n")
        parts.append(served.table(sec["rows"]))
    if "inprocess" in s:
        parts.append("\n## In-process baselines\n\n" + inprocess.table(s["inprocess"]["rows"]))
    if "realsize" in s:
        parts.append("\n## Real photo sizes: served vs in-process, against the goals\n\n" + s["realsize"]["markdown"])
    if "fused" in s:
        parts.append("\n## Fused vs materialized feature step (fresh process per point; features: "
                     f"{s['fused'].get('features')})\n\n" + fused_memory.table(s["fused"]["rows"]))
    if "synthesis" in s:
        parts.append("\n## Synthesis: generator alone vs with labelling\n\n" + synthesis_throughput.table(s["synthesis"]["rows"]))
    if "train" in s:
        parts.append("\n## GAN training steps (train-gan, R1 amortized)\n\n"
                     + train_throughput.table(s["train"]["rows"], s["train"]["recorded"]))
    if "scaling" in s:
        parts.append("\n## Data-parallel scaling (torchrun, CPU ranks, weak scaling; benchmarks/scaling.py)\n\n"
                     + scaling.table(s["scaling"]))
    if "gpu" in s:
        parts.append("\n## GPU\n\n" + (f"{s['gpu']['note']}\n\n" if s["gpu"].get("note") else "")
                     + gpu.table(s["gpu"]["rows"]))
    if doc.get("plots"):
        parts.append("\n## Plots\n\n" + "".join(f"![{k}]({v})\n" for k, v in doc["plots"].items()))
    note = loaded_note(env)
    if note:
        parts.append(f"\n_{note}._\n")
    return "".join(parts)


def _serving_line(c: dict | None) -> str:
    if not c:
        return "–"
    return (f"max batch {c['max_batch']}, preferred {c['preferred_batch']}, queue delay {c['queue_delay_us']} µs, "
            f"{c['instances']} instance(s) per entry model, {c['unet_instances']} UNet instance(s) with "
            f"{c['ort_threads']} ORT threads")


# --------------------------------------------------------------------------------------------
# Plots

def _conc_axis(ax, levels) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.minorticks_off()


def plot_latency(doc: dict, path: Path) -> Path | None:
    """One panel per entry model with a concurrency sweep: p50/p90/p95/p99 (colour) per protocol
    (gRPC solid, HTTP dashed)."""
    rows = _ok(doc["sections"].get("served", {}).get("rows", []))
    rows = [r for r in rows if r["model"] in served.ENTRIES]
    models = [m for m in dict.fromkeys(r["model"] for r in rows)
              if len({r["concurrency"] for r in rows if r["model"] == m}) >= 3]
    if not models:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False, sharey=True)
    levels = sorted({r["concurrency"] for r in rows})
    for ax, m in zip(axes[0], models):
        for proto, ls in (("grpc", "-"), ("http", "--")):
            pts = sorted((r["concurrency"], r) for r in rows if r["model"] == m and r["protocol"] == proto)
            if not pts:
                continue
            for i, p in enumerate((50, 90, 95, 99)):
                ax.plot([c for c, _ in pts], [r[f"p{p}_ms"] for _, r in pts], ls, marker="o", ms=3, color=f"C{i}",
                        label=f"p{p} {proto.upper()}")
        _conc_axis(ax, levels)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (batch-1 requests in flight)")
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("client latency (ms)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Served latency percentiles (perf_analyzer), {doc['environment']['host']} "
                 f"{doc['environment']['date'][:10]}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_throughput(doc: dict, path: Path) -> Path | None:
    rows = _ok(doc["sections"].get("served", {}).get("rows", []))
    ip = _ok(doc["sections"].get("inprocess", {}).get("rows", []))
    entries = [r for r in rows if r["model"] in served.ENTRIES]
    if not entries and not ip:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    combos = list(dict.fromkeys((r["model"], r["protocol"]) for r in entries))
    for i, (m, p) in enumerate(combos):
        pts = sorted((r["concurrency"], r["img_per_s"]) for r in entries if r["model"] == m and r["protocol"] == p)
        mi = list(dict.fromkeys(mm for mm, _ in combos)).index(m)
        ax.plot(*zip(*pts), "-" if p == "grpc" else "--", marker="o", ms=3, color=f"C{mi}",
                label=f"served {m} ({p.upper()})")
    pipe = sorted((r["batch"], r["img_s"]) for r in ip if r["engine"].startswith("onnxruntime pipeline"))
    if pipe:
        ax.plot(*zip(*pipe), "k-", lw=2, marker="s", label="in-process pipeline (batch = concurrency)")
    size = doc["unet_resolution"]
    net = sorted((r["batch"], r["img_s"]) for r in ip if r["engine"] == "onnxruntime" and r["size"] == size)
    if net:
        ax.plot(*zip(*net), "k:", marker="^", label=f"in-process ONNX Runtime, network only ({size}², batch)")
    srv_net = sorted((r["batch"], r["img_per_s"]) for r in rows if r["model"] == served.UNET_MODEL)
    if srv_net:
        ax.plot(*zip(*srv_net), ":", color="C7", marker="v", label=f"served {served.UNET_MODEL}, network only (batch)")
    _conc_axis(ax, sorted({1, 2, 4, 8, 16} | {r["concurrency"] for r in entries}))
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("concurrency (served) / batch (in-process)")
    ax.set_ylabel("images / s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Throughput, served vs in-process ({doc['threads']} threads), {doc['environment']['host']} "
                 f"{doc['environment']['date'][:10]}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_memory(doc: dict, path: Path) -> Path | None:
    rows = _ok(doc["sections"].get("fused", {}).get("rows", []))
    if not rows:
        return None
    fused_memory.plot(rows, path)
    return path


# --------------------------------------------------------------------------------------------

def rewrite(json_path: Path) -> dict:
    """Recompute the derived figures (pre/post split, ratios), the markdown and the plots of an earlier
    run from its JSON — after a fix to how they are derived; nothing is measured again."""
    import json

    doc = json.loads(Path(json_path).read_text())
    for r in doc["sections"].get("served", {}).get("rows", []):
        if r.get("status") == "ok" and r.get("variant") in ("bls", "ensemble") and r.get("server_stats"):
            kind = served.ENTRIES[r["model"]][0]
            r.update(served.prepost_split(r["model"], kind, r["variant"], r["server_stats"]))
            if r.get("prepost_ms") is not None and r.get("avg_latency_ms"):
                r["prepost_share_of_latency"] = min(1.0, r["prepost_ms"] / r["avg_latency_ms"])
    doc["ratios"] = ratios(doc)
    write_outputs(doc, Path(json_path).parent)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--unet", default=None, help="UNet run folder or file (default: the bundled one)")
    ap.add_argument("--threads", type=int, default=None, help="in-process threads (default: the server's ORT threads)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the smoke grid (seconds): tiny UNet, in-process + GPU smoke")
    g.add_argument("--full", action="store_true", help="every point of every section (well over 15 minutes on CPU)")
    ap.add_argument("--rewrite", default=None, metavar="JSON",
                    help="only recompute the derived figures, markdown and plots of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.rewrite:
        doc = rewrite(Path(args.rewrite))
        print(f"rewrote {args.rewrite} and its markdown/plots from the stored measurements")
        return 0
    cfg = BenchConfig.smoke() if args.quick else BenchConfig.full() if args.full else BenchConfig()
    if args.sections != ",".join(SECTIONS) or not args.quick:
        cfg.sections = [s for s in args.sections.split(",") if s]
    cfg.unet, cfg.threads = args.unet, args.threads
    unknown = [s for s in cfg.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    doc = run(cfg, Path(args.out))
    stem = result_stem(doc["environment"])
    print(f"\nwrote {Path(args.out) / stem}.{{json,md}} (+ CSV and plots) in {doc['total_seconds'] / 60:.1f} min")
    for k, rows in doc["ratios"].items():
        for x in rows[:12]:
            if "ratio" in x:
                print(f"  {k}: {x.get('what', x.get('model'))} {x['protocol']}: {x['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
