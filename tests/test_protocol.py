"""The paper's evaluation protocol (training/annotator.py): generated shots, simulated annotator."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ganseg.checkpoints import load_generator
from ganseg.evaluate import score_row
from ganseg.faces import render_faces, split_seeds
from ganseg.labels import CLASS_NAMES
from ganseg.heads import head_steps_for
from ganseg.training import annotator as A

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def G():
    return load_generator(None).eval().requires_grad_(False)


def test_the_simulated_annotator_paints_rendered_faces_well(G):
    """A weak annotator would make every method look alike: it must be near the supervised ceiling."""
    net = A.simulated_annotator(G.resolution)
    img, lab = render_faces(split_seeds("test", 40), resolution=G.resolution)
    row = score_row("annotator", 0, A.annotator_labels(net, img), lab, list(CLASS_NAMES))
    assert row["miou"] > 0.75, row


def test_generated_shots_are_the_samples_a_person_would_paint(G):
    """Same seeds -> the same images as `ganseg sample` (z from the seed) and the same masks."""
    from ganseg.images import to_uint8
    from ganseg.latents import z_from_seeds

    net = A.simulated_annotator(G.resolution)
    ws, img, masks = A.annotate_generated(G, net, [3, 7])
    with torch.no_grad():
        ref = to_uint8(G.synthesize(z=z_from_seeds([3, 7], G.z_dim)))
    assert np.array_equal(img, ref)
    assert masks.shape == (2, G.resolution, G.resolution) and masks.dtype == np.uint8
    ws2, img2, masks2 = A.annotate_generated(G, net, [3, 7])
    assert torch.equal(ws, ws2) and np.array_equal(masks, masks2)
    # a face has skin and background at least
    assert {CLASS_NAMES.index("skin"), 0} <= set(np.unique(masks[0]).tolist())


def test_style_mixing_keeps_the_layout_entries(G):
    ws = G.map(torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0)))
    mixed = A.style_mixed_ws(G, ws, copies=2, seed=1)
    assert mixed.shape == (6, G.num_ws, G.w_dim)
    k = A.STYLE_MIX_FROM
    assert torch.equal(mixed[:3, :k], ws[:, :k]) and torch.equal(mixed[3:, :k], ws[:, :k])
    assert not torch.equal(mixed[:3, k:], ws[:, k:])
    with pytest.raises(ValueError, match="mix_from"):
        A.style_mixed_ws(G, ws, 1, mix_from=G.num_ws)


def test_head_steps_scale_with_the_shots():
    assert head_steps_for(10, batch=2) == 2000          # each shot seen ~400 times
    assert head_steps_for(5, batch=2) == 1000
    assert head_steps_for(1, batch=1) == 500            # floor
    assert head_steps_for(20, batch=2) > head_steps_for(10, batch=2)


def test_autoshot_eval_generated_protocol_end_to_end(tmp_path):
    """benchmarks/autoshot_eval.py at toy scale: every rung of the ladder and both protocols appear,
    finished jobs are reused, other settings are refused."""
    script = [sys.executable, str(ROOT / "benchmarks" / "autoshot_eval.py"), "--out", str(tmp_path / "w")]
    toy = ["--n-test", "3", "--n-test-unet", "4", "--n-heldout", "3", "--invert-steps", "2", "--head-steps", "3",
           "--synth-n", "12", "--unet-steps", "2", "--unet-width", "4", "--head-seeds", "1"]
    jobs = ("annotator,heads,auto1:k1s0,auto10,genshots10,genshots1,oracle,real10,real1000,inv-heads,inv-auto10,suggest,"
            "table")
    r = subprocess.run(script + toy + ["--results", str(tmp_path / "res"), "--jobs", jobs],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "res" / "autoshot_eval.json").read_text())
    rows = {(row["protocol"], row["method"], row["shots"]): row for row in res["rows"]}
    for k in (1, 10):
        for m in ("annotator", "oracle", "auto-shot UNet", "supervised UNet on the generated shots"):
            assert ("generated", m, k) in rows, (m, k)
    assert ("generated", "supervised UNet", 10) in rows and ("generated", "supervised UNet", 1000) in rows
    assert ("inverted", "invert+mlp", 10) in rows  # the recipe's head kind (AutoshotEvalConfig.head_kind)
    assert ("inverted", "auto-shot UNet (real photos as shots, inverted)", 10) in rows
    auto10 = rows[("generated", "auto-shot UNet", 10)]
    assert {"miou", "miou_1000", "head_fit", "head_vs_annotator_heldout", "miou_heldout_generated"} <= set(auto10)
    assert all(0 <= row["miou"] <= 1 and set(row["iou"]) == set(res["classes"]) for row in res["rows"])
    assert rows[("generated", "auto-shot UNet", 1)]["n_runs"] == 1  # only k1s0 was asked for
    assert "auto10_minus_genshots10" in res["goals"] and "auto10_lowest_class" in res["goals"]
    # Suggest next's second shot vs the next seed in order: annotate's ranking picked one of the pool
    sg = json.loads((tmp_path / "w" / "suggest.json").read_text())
    assert len(sg["scores"]) == len(sg["pool"]) == 31 and sg["pick"] == 1 + int(np.argmax(sg["scores"]))
    two = {row["family"]: row for row in res["rows"] if row["shots"] == 2}
    assert set(two) == {"suggest-auto", "suggest-genshots", "order-auto", "order-genshots"}, set(two)
    assert f"seed {sg['pick']}" in two["suggest-auto"]["method"]
    md = (tmp_path / "res" / "autoshot_eval.md").read_text()
    assert "Loss ladder" in md and "NOT met" in md and "Suggest next" in md  # a 2-step toy meets nothing
    for f in ("autoshot_overlays.png", "autoshot_miou.png"):
        assert (tmp_path / "res" / f).stat().st_size > 0
    # the students learn from the shots too: the distillation set holds the annotated images
    meta = json.loads((tmp_path / "w" / "unet_a1_k10_h0" / "unet.json").read_text())
    assert "10 annotated shots" in meta["data"]
    # finished jobs are skipped on a rerun: only the new 1-shot student trains
    r2 = subprocess.run(script + toy + ["--results", str(tmp_path / "res2"), "--jobs", "auto10,auto1:k1s1,table"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert r2.stdout.count("from step") == 1, r2.stdout
    # cached results made with other settings are never mixed in
    r3 = subprocess.run(script + toy + ["--synth-n", "30", "--jobs", "table"], capture_output=True, text=True,
                        cwd=tmp_path, timeout=600)
    assert r3.returncode != 0 and "other settings (synth_n)" in r3.stderr


def test_ganseg_eval_generated_protocol(tmp_path):
    """`ganseg eval` defaults to the paper's protocol: heads vs the annotator on held-out generated images."""
    r = subprocess.run([sys.executable, "-m", "ganseg.cli", "eval", "--shots", "1,2", "--heads", "linear",
                        "--n-test", "3", "--n-heldout", "4", "--head-steps", "2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "fewshot_eval.json").read_text())
    assert res["protocol"] == "generated" and 0.5 < res["annotator_miou_rendered_test"] <= 1
    one = next(row for row in res["rows"] if row["shots"] == 1)
    assert len(one["miou_runs"]) == A.ONE_SHOT_REPEATS  # 1-shot: the mean over different single shots
    assert (tmp_path / "fewshot_overlays.png").stat().st_size > 0


def test_ganseg_score_compares_masks_by_name(tmp_path):
    """`ganseg score` (make demo's mIoU line): a perfect prediction scores 1, a wrong one less, and
    folders that share no mask name are refused with one line."""
    from ganseg.labels import save_label_png

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    _, lab = render_faces(split_seeds("test", 2), resolution=64)
    for i, m in enumerate(lab):
        save_label_png(truth / f"{i:04d}_mask.png", m)
        save_label_png(pred / f"{i:04d}_mask.png", m)
    run = lambda *a: subprocess.run([sys.executable, "-m", "ganseg.cli", "score", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    r = run(pred, truth, "--json", tmp_path / "s.json")
    assert r.returncode == 0 and r.stdout.startswith("mIoU 1.000 on 2 image(s)"), r.stdout + r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["miou"] == 1.0
    wrong = lab[0].copy()
    wrong[wrong == CLASS_NAMES.index("skin")] = 0
    save_label_png(pred / "0000_mask.png", wrong)
    r = run(pred, truth)
    assert r.returncode == 0 and float(r.stdout.split()[1]) < 1.0
    (tmp_path / "other").mkdir()
    r = run(tmp_path / "other", truth)
    assert r.returncode == 2 and "has a namesake" in r.stderr and "Traceback" not in r.stderr
