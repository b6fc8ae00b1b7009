"""GAN trainer: it learns (losses move, weights change) and resumes bit-for-bit."""
import subprocess
import sys

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
