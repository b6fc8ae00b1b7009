"""Few-shot heads, inversion, annotation workflow and metrics, on a tiny generator."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ganseg import Generator, GeneratorConfig, save_generator
from ganseg.evaluate import confusion_matrix, iou_per_class, mean_iou, score_row
from ganseg.heads import HeadEnsemble, head_for, load_head, save_head
from ganseg.invert import InvertConfig, invert, load_inversion, noise_regularization, psnr, save_inversion
from ganseg.ops import materialize
from ganseg.shots import Shots
from ganseg.headfit import HeadTrainConfig, train_head


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return Generator(GeneratorConfig(resolution=32, z_dim=32, w_dim=32, mapping_layers=2,
                                     channels=[32, 32, 16, 16])).eval().requires_grad_(False)


def feats_of(G, n=2, seed=0):
    z = torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))
    return G.synthesize_features(z=z)


@pytest.mark.parametrize("kind", ["linear", "mlp", "cnn"])
def test_head_shapes_and_fused_first_layer(G, kind):
    head = head_for(G, kind, num_classes=5).eval()
    _, feats = feats_of(G)
    out = head(feats)
    assert out.shape == (2, 5, 32, 32)
    # the fused first layer equals a 1x1 conv over the materialized stack
    stack = materialize([f * s for f, s in zip(feats, head.project.scales)], 32)
    ref = torch.nn.functional.conv2d(stack, head.project.weight[:, :, None, None], head.project.bias)
    torch.testing.assert_close(head.project(feats), ref, rtol=1e-4, atol=1e-5)


def test_min_resolution_selects_layers(G):
    head = head_for(G, "linear", 3, min_resolution=8)
    assert head.cfg.feature_layers == [1, 2, 3, 4, 5, 6] and sum(head.cfg.feature_channels) == 32 * 2 + 16 * 4


def test_head_file_roundtrip_and_ensemble(G, tmp_path):
    _, feats = feats_of(G)
    heads = [head_for(G, "cnn", 4).eval() for _ in range(3)]
    save_head(heads[0], tmp_path / "h.safetensors")
    torch.testing.assert_close(load_head(tmp_path / "h.safetensors")(feats), heads[0](feats))
    ens = HeadEnsemble(heads)
    save_head(ens, tmp_path / "e.safetensors")
    loaded = load_head(tmp_path / "e.safetensors")
    probs, unc = loaded(feats)
    torch.testing.assert_close(probs, ens(feats)[0])
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 32))
    assert unc.shape == (2, 32, 32) and (unc >= 0).all()
    same = HeadEnsemble([heads[0], heads[0]])
    assert same(feats, uncertainty="disagreement")[1].abs().max() == 0  # identical heads agree
    with pytest.raises(ValueError, match="not a ganseg head"):
        save_generator(G, tmp_path / "g.safetensors")
        load_head(tmp_path / "g.safetensors")


def test_head_learns_a_shot(G):
    z = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    ws = G.map(z)
    img = G.synthesize(w=ws)
    mask = (img.mean(1) > img.mean()).long() + (img[:, 0] > img[:, 1]).long()  # a 3-class partition
    shots = Shots(ws, mask, ["a", "b", "c"])
    head = train_head(G, shots, HeadTrainConfig(kind="cnn", steps=150, lr=2e-3), progress=False)
    _, feats = G.synthesize_features(w=ws)
    acc = (head(feats).argmax(1) == mask).float().mean()
    assert acc > 0.9


def test_inversion_recovers_generated_images(G):
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    target = G.synthesize(z=z).clamp(-1, 1)
    start = psnr(G.synthesize(w=G.mapping.w_avg[None].expand(2, -1)).clamp(-1, 1), target)
    inv = invert(G, target, InvertConfig(steps=120, lr=0.05), progress=False)
    assert inv.ws.shape == (2, G.num_ws, 32) and len(inv.noise) == len(G.feature_info)
    assert (inv.psnr > start + 8).all() and (inv.psnr > 20).all(), (start, inv.psnr)
    # images are independent: the first image inverted alone follows the same path (a few steps:
    # batch-size-dependent float rounding grows over a long optimization)
    pair = invert(G, target, InvertConfig(steps=10, lr=0.05), progress=False)
    alone = invert(G, target[:1], InvertConfig(steps=10, lr=0.05), progress=False)
    torch.testing.assert_close(alone.ws, pair.ws[:1], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="images must be"):
        invert(G, torch.zeros(1, 3, 16, 16))


def test_inversion_file_roundtrip(G, tmp_path):
    inv = invert(G, G.synthesize(z=torch.randn(2, 32)).clamp(-1, 1), InvertConfig(steps=2), progress=False)
    save_inversion(inv, tmp_path / "inv.safetensors")
    back = load_inversion(tmp_path / "inv.safetensors")
    for a, b in zip([inv.ws, inv.recon, inv.psnr, *inv.noise], [back.ws, back.recon, back.psnr, *back.noise]):
        assert torch.equal(a, b)
    assert len(back.noise) == len(inv.noise)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable inversion"):
        load_inversion(tmp_path / "bad.safetensors")


def test_noise_regularization_penalizes_structure():
    white = [torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))]
    smooth = [torch.nn.functional.interpolate(torch.randn(1, 1, 4, 4), size=32, mode="bilinear")]
    assert noise_regularization(smooth)[0] > 10 * noise_regularization(white)[0]


def test_iou_metrics():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 1, 0]])
    conf = confusion_matrix(pred, target, 4)
    ious = iou_per_class(conf)
    torch.testing.assert_close(ious[:3], torch.tensor([1 / 3, 3 / 5, 1.0], dtype=torch.float64))
    assert torch.isnan(ious[3])  # absent everywhere: left out of the mean
    assert abs(mean_iou(conf) - (1 / 3 + 3 / 5 + 1) / 3) < 1e-9
    row = score_row("m", 1, pred.numpy(), target.numpy(), ["a", "b", "c", "d"], family="x")
    assert row["miou"] == mean_iou(conf) and row["iou"]["b"] == 3 / 5 and row["family"] == "x"
    with pytest.raises(ValueError, match="differ in shape"):
        score_row("m", 1, pred[:1], target, ["a", "b", "c", "d"])


def test_annotation_workflow_cli(G, tmp_path):
    """sample -> user masks + labels.json -> train-head -> segment a real image."""
    ckpt = tmp_path / "g.safetensors"
    save_generator(G, ckpt)
    shots = tmp_path / "shots"

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "ganseg.cli", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    cli("sample", "--ckpt", str(ckpt), "--seeds", "0-1", "--out", str(shots))
    from PIL import Image
    from ganseg.labels import save_label_png

    for s in (0, 1):  # the "user" paints: class 1 where the image is bright
        im = np.asarray(Image.open(shots / f"seed{s:04d}.png")).mean(-1)
        save_label_png(shots / f"seed{s:04d}_mask.png", (im > im.mean()).astype(np.uint8))
    (shots / "labels.json").write_text(json.dumps({"classes": ["dark", "bright"]}))
    cli("train-head", "--ckpt", str(ckpt), "--shots", str(shots), "--head", "linear", "--steps", "30",
        "--out", str(tmp_path / "head.safetensors"))
    cli("segment", "--ckpt", str(ckpt), "--head", str(tmp_path / "head.safetensors"), "--invert-steps", "5",
        str(shots / "seed0000.png"), "--out", str(tmp_path / "seg"))
    from ganseg.labels import load_label_png

    lab = load_label_png(tmp_path / "seg" / "seed0000_mask.png")
    assert lab.shape == (32, 32) and set(np.unique(lab)) <= {0, 1}
    assert (tmp_path / "seg" / "overlays.png").is_file()

    (shots / "seed0001_mask.png").unlink()
    save_label_png(shots / "seed0000_mask.png", np.full((32, 32), 5, np.uint8))
    r = subprocess.run([sys.executable, "-m", "ganseg.cli", "train-head", "--ckpt", str(ckpt), "--shots",
                        str(shots), "--out", str(tmp_path / "h2.safetensors")], capture_output=True, text=True)
    assert r.returncode == 2 and "labels.json names 2 classes" in r.stderr
