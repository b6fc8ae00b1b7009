"""GAN trainer: it learns (losses move, weights change) and resumes bit-for-bit."""
import subprocess
import sys
from pathlib import Path

import torch

from ganseg import load_generator
from ganseg.training.train_gan import GANTrainer, TrainGANConfig, diff_augment

TINY = dict(resolution=64, channels=[16, 16, 8, 8, 8], z_dim=16, w_dim=16, mapping_layers=2, batch=4,
            n_images=8, r1_every=2)


def images():
    return torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    data = images()
    straight = GANTrainer(TrainGANConfig(**TINY), tmp_path / "a")
    start = {k: v.clone() for k, v in straight.G.state_dict().items()}
    straight.train(data, steps=4, ckpt_every=100, sample_every=100)

    first = GANTrainer(TrainGANConfig(**TINY), tmp_path / "b")
    first.train(data, steps=2, ckpt_every=100, sample_every=100)  # saves at its last step
    resumed = GANTrainer(TrainGANConfig(**TINY), tmp_path / "b")
    resumed.load(tmp_path / "b" / "checkpoint.pt")
    assert resumed.step == 2
    resumed.train(data, steps=4, ckpt_every=100, sample_every=100)

    for name in ("G", "D", "G_ema"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert any(not torch.equal(start[k], straight.G.state_dict()[k]) for k in start)  # it trained
    # the exported generator is the EMA one and loads through the public API
    G = load_generator(tmp_path / "b" / "generator.safetensors")
    assert all(torch.equal(G.state_dict()[k], resumed.G_ema.state_dict()[k]) for k in G.state_dict())
    assert (tmp_path / "b" / "samples" / "step0000004.png").is_file()


def test_resume_refuses_another_architecture(tmp_path):
    t = GANTrainer(TrainGANConfig(**TINY), tmp_path)
    t.save()
    other = GANTrainer(TrainGANConfig(**{**TINY, "channels": [16, 16, 16, 8, 8]}), tmp_path)
    try:
        other.load(tmp_path / "checkpoint.pt")
    except ValueError as exc:
        assert "architecture" in str(exc)
    else:
        raise AssertionError("loaded a checkpoint of another architecture")


def test_diff_augment_is_differentiable_and_changes_images():
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    y = diff_augment(x)
    y.sum().backward()
    assert y.shape == x.shape and x.grad is not None and not torch.equal(y, x)


def test_cli_trains_on_a_folder_and_resumes(tmp_path):
    from ganseg.images import save_png

    for i, im in enumerate(images().numpy()):
        save_png(tmp_path / "data" / f"{i:04d}.png", im)
    cmd = [sys.executable, "-m", "ganseg.cli", "train-gan", "--res", "64", "--channels", "16,16,8,8,8",
           "--z-dim", "16", "--mapping-layers", "2", "--batch", "4", "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "run"), "--device", "cpu"]
    r = subprocess.run(cmd + ["--steps", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(cmd + ["--steps", "3", "--resume"], capture_output=True, text=True)
    assert r.returncode == 0 and "resumed at step 2" in r.stdout, r.stderr[-2000:]


def test_augmented_step_with_r1_never_uses_grid_sample(tmp_path, monkeypatch):
    """R1 differentiates twice through DiffAugment; CUDA has no double backward for grid_sample, so
    the augmentation must not use it (this runs on CPU, where grid_sample would have worked)."""
    def refuse(*a, **k):
        raise AssertionError("F.grid_sample called")

    monkeypatch.setattr(torch.nn.functional, "grid_sample", refuse)
    t = GANTrainer(TrainGANConfig(**TINY), tmp_path)
    before = [p.clone() for p in t.D.parameters()]
    logs = t.train_step(images())  # step 0: R1 is due
    assert "r1" in logs and logs["r1"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, t.D.parameters()))


def test_diff_augment_translation_is_a_shift_with_a_black_border():
    """Colour off (constant offsets cancel), one image: the output is the input shifted by whole
    pixels, zero where it came from outside, and a half-size square cut out."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, 16, 16) + 1  # strictly positive: zeros come only from border and cutout
    y = diff_augment(x)
    zero = (y == 0).all(dim=1)[0]
    assert 16 <= int(zero.sum()) <= 16 * 16 - 1  # at least a corner of the cutout square
    # double backward works (what R1 needs)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(diff_augment(x).square().sum(), x, create_graph=True)
    g.sum().backward()
    assert x.grad is not None


def test_warm_start_from_a_generator_and_discriminator(tmp_path):
    from ganseg.images import save_png
    from ganseg.training.train_gan import export_bundle

    src = GANTrainer(TrainGANConfig(**TINY), tmp_path / "src")
    src.train(images(), steps=1, ckpt_every=100, sample_every=100)
    g_path, d_path = export_bundle(tmp_path / "src", tmp_path / "bundle", dtype=torch.float32)

    for i, im in enumerate(images().numpy()):
        save_png(tmp_path / "data" / f"{i:04d}.png", im)
    base = [sys.executable, "-m", "ganseg.cli", "train-gan", "--batch", "4", "--data", str(tmp_path / "data"),
            "--device", "cpu", "--steps", "1", "--init", str(g_path), str(d_path)]
    r = subprocess.run(base + ["--out", str(tmp_path / "warm")], capture_output=True, text=True)
    assert r.returncode == 0 and "warm start" in r.stdout, r.stderr[-2000:]
    state = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1 and len(state["opt_G"]["state"]) > 0  # it trained one step, fresh Adam
    G0 = load_generator(g_path)
    moved = [k for k, v in G0.state_dict().items() if not torch.equal(v, state["G"][k])]
    assert moved and all(torch.allclose(v, state["G"][k], atol=0.05) for k, v in G0.state_dict().items())

    # a flag against the generator, and a discriminator of other widths: refused before any work
    r = subprocess.run(base + ["--out", str(tmp_path / "x"), "--res", "32"], capture_output=True, text=True)
    assert r.returncode != 0 and "--res 32" in r.stderr and "Traceback" not in r.stderr
    other = GANTrainer(TrainGANConfig(**{**TINY, "channels": [16, 16, 16, 8, 8]}), tmp_path / "other")
    other.save()
    _, d_other = export_bundle(tmp_path / "other", tmp_path / "other_bundle")
    r = subprocess.run(base[:-2] + [str(g_path), str(d_other), "--out", str(tmp_path / "y")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "does not fit generator" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_train_throughput_benchmark_tiny_mode(tmp_path):
    """benchmarks/train_throughput.py --quick writes its JSON, table and plot with a positive rate."""
    import json

    r = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "train_throughput.json").read_text())
    row = doc["rows"][0]
    assert row["img_per_s"] > 0 and row["r1_step_ms"] > 0 and abs(row["steps_per_s"] * row["batch"] - row["img_per_s"]) < 1e-6 * row["img_per_s"]
    assert doc["recorded"] and "before" in (tmp_path / "train_throughput.md").read_text()
    assert (tmp_path / "train_throughput.png").stat().st_size > 1000
