"""The benchmark helpers (benchmarks/common.py), perf_analyzer output parsing, the ratio arithmetic,
and a smoke run of `make bench`'s driver on a tiny grid (seconds; no server, no perf_analyzer)."""
from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import common  # noqa: E402
import fused_memory  # noqa: E402
import served  # noqa: E402

# A CSV exactly as perf_analyzer 2.40 wrote it (-f) against ganseg_segment on this machine (µs).
PA_CSV = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
          "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
          "4,5.49092,40,5173,234210,118,424664,3171,3,618733,1035991,1046653,1047375\n")


# --------------------------------------------------------------------------------------------
# common.py

def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    xs = rng.exponential(size=101).tolist()
    got = common.percentiles(xs)
    for p in (50, 90, 95, 99):
        assert got[p] == pytest.approx(float(np.percentile(xs, p)))
    assert common.percentiles([3.0]) == {50: 3.0, 90: 3.0, 95: 3.0, 99: 3.0}
    with pytest.raises(ValueError):
        common.percentiles([])


def test_measure_warms_up_then_times_synchronized_calls():
    calls, syncs = [], []
    t = common.measure(lambda: calls.append(1), warmup=3, repeats=5, items=4, sync=lambda: syncs.append(1))
    assert len(calls) == 8 and len(t.samples) == 5 and t.warmup == 3
    assert len(syncs) == 1 + 5  # once after the burn-in, once per timed call
    s = t.summary()
    assert s["repeats"] == 5 and s["items_per_call"] == 4
    assert s["items_per_s"] == pytest.approx(4 / t.median)
    assert s["p50_ms"] == pytest.approx(1e3 * t.median)
    # min_seconds keeps measuring past `repeats`, bounded by max_repeats
    t = common.measure(lambda: time.sleep(0.002), warmup=0, repeats=1, min_seconds=0.05, max_repeats=1000)
    assert sum(t.samples) >= 0.04 and len(t.samples) > 1
    t = common.measure(lambda: None, warmup=0, repeats=2, min_seconds=10, max_repeats=3)
    assert len(t.samples) == 3


def test_environment_record_names_machine_versions_and_commit():
    env = common.environment(extra="x")
    for k in ("host", "date", "cpu", "cores", "usable_cores", "gpu", "versions", "git_commit", "load_avg_1_5_15"):
        assert k in env, k
    assert env["extra"] == "x" and env["cores"] >= 1
    assert env["versions"]["torch"] and env["versions"]["numpy"] and env["versions"]["python"]
    assert env["gpu"]["available"] in (True, False) and (env["gpu"]["available"] or env["gpu"]["reason"])
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert common.result_stem(env) == f"{env['host']}-{env['date'][:10]}"
    md = common.environment_markdown(env)
    assert env["host"] in md and env["cpu"] in md
    busy = dict(env, load_avg_1_5_15=[4 * env["usable_cores"], 0, 0])
    assert "loaded machine" in common.loaded_note(busy) and "loaded machine" in common.environment_markdown(busy)
    assert common.loaded_note(dict(env, load_avg_1_5_15=[0.0, 0, 0])) is None


def test_result_files_are_written_atomically(tmp_path):
    p = common.write_json(tmp_path / "sub" / "r.json", {"a": np.float32(1.5), "p": Path("x")})
    assert json.loads(p.read_text()) == {"a": 1.5, "p": "x"}
    assert not [f for f in p.parent.iterdir() if f.name.startswith(".")]  # no temp file left
    with pytest.raises(TypeError):
        common.write_json(tmp_path / "bad.json", {"a": object()})
    assert not (tmp_path / "bad.json").exists()
    common.write_text(tmp_path / "t.md", "hello\n")
    assert (tmp_path / "t.md").read_text() == "hello\n"
    plt = common.pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    png = common.save_figure(fig, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_aligns_numbers_and_marks_missing():
    md = common.markdown_table(["name", "ms"], [["a", 1.234], ["b", None]], digits=2)
    lines = md.splitlines()
    assert lines[0] == "| name | ms |" and lines[1] == "|---|---:|"
    assert lines[2] == "| a | 1.23 |" and lines[3] == "| b | – |"


# --------------------------------------------------------------------------------------------
# perf_analyzer output, server statistics, ratios

def test_parse_perf_analyzer_csv_in_ms():
    (row,) = served.parse_csv(PA_CSV)
    assert row["concurrency"] == 4 and row["infer_per_s"] == pytest.approx(5.49092)
    assert row["p50_ms"] == pytest.approx(618.733) and row["p99_ms"] == pytest.approx(1047.375)
    assert row["server_queue_ms"] == pytest.approx(234.210)
    assert row["server_compute_infer_ms"] == pytest.approx(424.664)
    assert row["avg_latency_ms"] == pytest.approx((40 + 5173 + 234210 + 118 + 424664 + 3171 + 3) / 1e3)
    assert served.parse_csv("Concurrency,Inferences/Second\n") == []
    assert served.request_count("Request concurrency: 4\n  Client: \n    Request count: 57\n") == 57
    merged = served.merge_csv([({"model": "m", "protocol": "grpc", "batch": 1, "variant": "bls", "input": "bytes"},
                                PA_CSV)] * 2)
    lines = merged.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("Model,Protocol,Batch,Variant,Input,Concurrency,")
    assert lines[1].startswith("m,grpc,1,bls,bytes,4,5.49092")


def _stats(entry_req, entry_ns, unet_req, unet_ns, unet_inf, unet_exec, pre=None, post=None):
    def m(name, req, ns, inf=None, ex=None, queue=0):
        return {"name": name, "inference_count": inf or req, "execution_count": ex or req,
                "inference_stats": {"success": {"count": req}, "queue": {"ns": queue},
                                    "compute_input": {"ns": 0}, "compute_infer": {"ns": ns}, "compute_output": {"ns": 0}}}
    out = {"ganseg_segment": m("ganseg_segment", entry_req, entry_ns),
           "ganseg_unet": m("ganseg_unet", unet_req, unet_ns, unet_inf, unet_exec)}
    if pre:
        out["ganseg_pre"] = m("ganseg_pre", *pre)
        out["ganseg_post"] = m("ganseg_post", *post)
    return out


def test_server_statistics_give_batches_and_the_pre_post_split():
    before = _stats(0, 0, 0, 0, 0, 0)
    after = _stats(10, 10 * 50_000_000, 5, 5 * 20_000_000, 10, 5)  # 10 requests, 5 BLS executions of 2
    d = served.stats_delta(before, after)
    assert d["ganseg_unet"]["avg_batch"] == 2 and d["ganseg_segment"]["compute_ms"] == pytest.approx(50)
    split = served.prepost_split("ganseg_segment", "bytes", "bls", d)
    assert split["net_ms"] == pytest.approx(20) and split["prepost_ms"] == pytest.approx(30)
    assert split["prepost_share_of_compute"] == pytest.approx(0.6)
    ens = served.stats_delta(_stats(0, 0, 0, 0, 0, 0, (0, 0), (0, 0)),
                             _stats(4, 0, 4, 4 * 10_000_000, 4, 4, (4, 4 * 5_000_000), (4, 4 * 15_000_000)))
    split = served.prepost_split("ganseg_segment", "bytes", "ensemble", ens)
    assert split["prepost_ms"] == pytest.approx(20) and split["prepost_share_of_compute"] == pytest.approx(2 / 3)
    assert served.prepost_split("x", "bytes", "bls", {}) == {}


def test_input_data_files_carry_the_png_and_its_pixels(tmp_path):
    from PIL import Image
    import io

    img = (np.arange(5 * 7 * 3) % 255).astype(np.uint8).reshape(5, 7, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    png = buf.getvalue()
    files = served.input_files(png, tmp_path)
    b = json.loads(files["bytes"].read_text())["data"][0]["IMAGE"]
    raw = base64.b64decode(b["content"]["b64"])
    assert b["shape"] == [1] and struct.unpack("<I", raw[:4])[0] == len(png) and raw[4:] == png
    r = json.loads(files["raw"].read_text())["data"][0]["IMAGE"]
    assert r["shape"] == [5, 7, 3]
    assert np.array_equal(np.frombuffer(base64.b64decode(r["content"]["b64"]), np.uint8).reshape(5, 7, 3), img)


def test_default_grid_and_missing_perf_analyzer_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    pts = served.default_points()
    keys = {(p.model, p.protocol, p.concurrency) for p in pts}
    for proto in served.PROTOCOLS:
        for c in served.CONCURRENCY:
            assert ("ganseg_segment", proto, c) in keys and ("ganseg_segment_ensemble", proto, c) in keys
        assert ("ganseg_segment_raw", proto, 8) in keys and ("ganseg_segment_raw_ensemble", proto, 1) in keys
    assert sorted(p.batch for p in pts if p.model == served.UNET_MODEL) == list(served.UNET_BATCHES)
    full = served.default_points(short_concurrency=None)
    assert len(full) == 4 * 2 * 5 + 4
    monkeypatch.setenv("PERF_ANALYZER", str(tmp_path / "nope"))
    version, why = served.perf_analyzer_version()
    assert version is None and "make perf-analyzer" in why
    sec = served.served_rows(tmp_path / "unet.safetensors", b"", tmp_path, points=pts[:2])
    assert [r["status"] for r in sec["rows"]] == ["absent", "absent"] and "make perf-analyzer" in sec["rows"][0]["reason"]


def test_perf_analyzer_wrapper_says_how_to_install(tmp_path):
    r = subprocess.run([str(ROOT / "tools" / "perf_analyzer" / "perf_analyzer"), "--version"], capture_output=True,
                       text=True, env={**os.environ, "PERF_ENV": str(tmp_path / "none")})
    assert r.returncode == 127 and "make perf-analyzer" in r.stderr


def test_ratios_against_the_goals():
    doc = {"unet_resolution": 64, "sections": {
        "served": {"rows": [
            {"status": "ok", "model": "ganseg_unet", "protocol": "grpc", "batch": 4, "concurrency": 1,
             "img_per_s": 90.0, "p50_ms": 40, "p99_ms": 50},
            {"status": "ok", "model": "ganseg_segment", "protocol": "http", "batch": 1, "concurrency": 8,
             "img_per_s": 40.0, "p50_ms": 100.0, "p99_ms": 250.0, "requests_measured": 48, "entry_avg_batch": 6.0,
             "prepost_ms": 6.0, "net_ms": 4.0, "prepost_share_of_compute": 0.6, "prepost_share_of_latency": 0.05},
            {"status": "absent", "model": "ganseg_segment", "protocol": "grpc", "batch": 1, "concurrency": 8,
             "reason": "x"}]},
        "inprocess": {"rows": [
            {"status": "ok", "engine": "onnxruntime", "size": 64, "batch": 4, "img_s": 100.0},
            {"status": "ok", "engine": "onnxruntime", "size": 256, "batch": 4, "img_s": 7.0},
            {"status": "ok", "engine": "onnxruntime pipeline (PNG bytes -> MASK + OVERLAY)", "size": 64, "batch": 8,
             "img_s": 50.0, "stage_ms": {"pre": 1.0, "net": 2.0, "post": 1.0}, "prepost_share": 0.5}]}}}
    r = bench.ratios(doc)
    net, pipe = r["served_over_inprocess"]
    assert net["batch"] == 4 and net["ratio"] == pytest.approx(0.9)
    assert pipe["batch"] == 8 and pipe["ratio"] == pytest.approx(0.8) and pipe["served_avg_batch"] == 6.0
    (tail,) = r["p99_over_p50_c8"]
    assert tail["ratio"] == pytest.approx(2.5) and tail["protocol"] == "http"
    assert bench._goal(net["ratio"], 0.85, True) == "met" and bench._goal(pipe["ratio"], 0.85, True) != "met"
    assert bench._goal(tail["ratio"], 2.0, False) != "met"
    assert {x["model"] for x in r["prepost_share"]} == {"ganseg_segment", "in-process pipeline"}


def test_materialized_point_that_cannot_fit_is_absent_with_the_estimate(monkeypatch):
    monkeypatch.setattr(fused_memory, "available_mb", lambda: 100.0)
    monkeypatch.setattr(fused_memory, "channels_of", lambda case: 5568)
    rows = fused_memory.run_points(["512 (1024 config-f resized)"], ["linear"], ["infer"], methods=("materialized",),
                                   log=lambda s: None)
    assert rows[0]["status"] == "absent" and "GB" in rows[0]["reason"]
    assert fused_memory.materialized_estimate_mb("512 (1024 config-f resized)", 5568) == pytest.approx(
        5568 * 512 * 512 * 4 / 2**20 * fused_memory.MATERIALIZED_OVERHEAD)


def test_synthesis_throughput_reports_both_figures():
    import torch

    import synthesis_throughput
    from ganseg import Generator, GeneratorConfig
    from ganseg.heads import head_for

    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channels=[16, 16, 8, 8]))
    G.eval().requires_grad_(False)
    r = synthesis_throughput.synthesis_throughput(G, head_for(G, "linear", 10).eval(), batch=4, n=8)
    assert r["generator_img_s"] > 0 and r["generator_and_head_img_s"] > 0 and r["n"] == 8
    rows = synthesis_throughput.measure_rows([(1, "tiny", G, 4, 8)], heads=("linear",), repeats=1, log=lambda s: None)
    assert rows[0]["overhead"] == pytest.approx(rows[0]["generator_img_s"] / rows[0]["generator_and_head_img_s"] - 1)
    assert "tiny" in synthesis_throughput.table(rows)


# --------------------------------------------------------------------------------------------
# The driver, end to end on the smoke grid

def test_bench_driver_smoke_run(tmp_path):
    t0 = time.perf_counter()
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - t0
    (js,) = tmp_path.glob("*.json")
    doc = json.loads(js.read_text())
    assert js.stem == common.result_stem(doc["environment"])
    env = doc["environment"]
    assert env["versions"]["torch"] and env["cpu"] and "gpu" in env
    ip = doc["sections"]["inprocess"]["rows"]
    ok = {(r["engine"], r["batch"]) for r in ip if r["status"] == "ok"}
    assert {("torch eager", 1), ("torch eager", 2), ("onnxruntime", 1), ("onnxruntime", 2)} <= ok
    pipe = [r for r in ip if r["engine"].startswith("onnxruntime pipeline")]
    assert pipe and pipe[0]["status"] == "ok" and 0 < pipe[0]["prepost_share"] < 1
    assert all(r["img_s"] > 0 and r["median_ms"] > 0 and r["repeats"] >= 2 for r in ip if r["status"] == "ok")
    g = doc["sections"]["gpu"]["rows"]
    assert any(r["status"] == "ok" for r in g)  # the CPU smoke mode ran the eager/torch paths
    assert any(r["status"] == "absent" and r["engine" if "engine" in r else "impl"] in ("cuda graph fp32", "cuda")
               for r in g)  # and says why the CUDA-only rows cannot run here
    md = (tmp_path / f"{js.stem}.md").read_text()
    assert "In-process baselines" in md and env["host"] in md
    assert (tmp_path / f"{js.stem}-throughput.png").read_bytes()[:4] == b"\x89PNG"
    assert elapsed < 120
    # the derived figures can be recomputed from the stored measurements alone
    before = json.loads(js.read_text())
    assert bench.main(["--rewrite", str(js)]) == 0
    after = json.loads(js.read_text())
    assert after["sections"] == before["sections"] and after["environment"] == before["environment"]
    assert (tmp_path / f"{js.stem}.md").read_text() == md


def test_measure_bounds_a_slow_point_but_keeps_two_samples():
    t = common.measure(lambda: time.sleep(0.03), warmup=0, repeats=10, max_seconds=0.05)
    assert len(t.samples) == 2
    t = common.measure(lambda: None, warmup=0, repeats=1, max_seconds=0.0)
    assert len(t.samples) == 1


def test_torch_compile_child_is_stopped_at_its_limit_and_rows_say_so(tmp_path):
    import inprocess

    u, about = bench._tiny_unet()
    f = bench._unet_file(u, about, None, tmp_path)
    t0 = time.perf_counter()
    rows = inprocess.compile_rows_in_child(f, sizes=[32], batches=[1, 2], threads=1, budget_s=1.5, work=tmp_path,
                                           log=lambda s: None)
    assert time.perf_counter() - t0 < 30
    assert [(r["batch"], r["engine"]) for r in rows] == [(1, "torch.compile"), (2, "torch.compile")]
    assert all(r["status"] in ("ok", "skipped") for r in rows)
    assert all("python benchmarks/inprocess.py" in r["reason"] for r in rows if r["status"] == "skipped")
