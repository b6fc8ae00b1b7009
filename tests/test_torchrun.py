"""Data parallel training and sharded synthesis under the real launcher: `torchrun --nproc-per-node 2`
on CPU (gloo), tiny networks.

What must hold (issue 24): two ranks splitting a global batch compute what one process computes with
that batch (float rounding apart: the deviation is measured against the size of the update), a run
killed or stopped with one number of processes resumes with another and lands where an uninterrupted
one-process run lands, and two ranks synthesize the very bytes one process does. The comparisons use
the trainers' Python API in this process as the one-process reference (the CLI is a thin layer over
it, and tests/test_train_gan.py / test_autoshot.py run the CLI in one process).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ganseg import Generator, GeneratorConfig, save_generator
from ganseg.cli import main
from ganseg.heads import head_for, save_head
from ganseg.images import save_png
from ganseg.synthesize import SynthConfig, load_synth_dataset, read_manifest, synthesize_dataset
from ganseg.training.train_gan import GANTrainer, TrainGANConfig, diff_augment, load_training_images
from ganseg.training.train_unet import UNetTrainConfig, UNetTrainer, synth_data

TOL = 1e-3  # |two ranks - one process| / |one process's update|; measured ~1e-7 (UNet) and ~3e-6 (GAN)


def launcher() -> list[str]:
    """torchrun of this interpreter's environment (the console script, else its module)."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def torchrun(nproc: int, *args: str, wait: bool = True, timeout: float = 120):
    """`torchrun --standalone --nproc-per-node N -m ganseg.cli ARGS`: a c10d rendezvous on a free
    localhost port, so tests running side by side never share one."""
    cmd = launcher() + ["--standalone", "--nproc-per-node", str(nproc), "-m", "ganseg.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def deviation(a: dict, b: dict, start: dict) -> float:
    """|a - b| relative to |a - start| over all floating tensors: how far two runs differ, measured
    against how far training moved the weights."""
    keys = [k for k in a if a[k].is_floating_point()]
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys) ** 0.5
    den = sum(float((a[k].double() - start[k].double()).square().sum()) for k in keys) ** 0.5
    assert den > 0, "nothing trained"
    return num / den


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


# --------------------------------------------------------------------------------------------
# fixtures: a random generator + head, a synthesized dataset, a folder of images

@pytest.fixture(autouse=True)
def one_thread():
    """The in-process references on one thread, as each torchrun worker (OMP_NUM_THREADS=1): on a
    busy 2-core machine two OpenMP threads spin against the workers and cost 5x the time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channels=[16, 16, 8, 8]))
    head = head_for(G, "linear", 10)
    save_generator(G, d / "g.safetensors")
    save_head(head, d / "head.safetensors")
    synthesize_dataset(G, head, SynthConfig(n=24, shard_size=8, batch=8, soft_topk=2), d / "data", progress=False)
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, im in enumerate(x.numpy()):
        save_png(d / f"{i:04d}.png", im)
    return d


# --------------------------------------------------------------------------------------------
# train-unet

UNET_STEPS = 40  # the cosine schedule's horizon in every run compared; also the kill's window (~2 s)


def unet_reference(models, out):
    cfg = UNetTrainConfig(width=4, depth=2, steps=UNET_STEPS, batch=4, val_every=1000, ckpt_every=1)
    return UNetTrainer(cfg, synth_data(models / "data"), out)


def test_train_unet_two_ranks_equal_one_process_and_resume_across_world_sizes(models, tmp_path):
    args = ["train-unet", "--data", models / "data", "--width", "4", "--depth", "2", "--batch", "4",
            "--steps", UNET_STEPS, "--val-every", "1000", "--ckpt-every", "1", "--device", "cpu"]
    # 2 ranks from scratch, SIGKILLed (agent and workers, as a lost machine) once a checkpoint exists
    run = torchrun(2, *args, "--out", tmp_path / "two", wait=False)
    state = tmp_path / "two" / "train_state.pt"
    deadline = time.time() + 120
    while not state.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    for pid in reversed(process_tree(run.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out = run.communicate()[0]
    assert state.exists(), out[-3000:]
    killed = torch.load(state, weights_only=True)
    k = int(killed["step"])
    assert 1 <= k < UNET_STEPS - 2, f"the kill landed at step {k}"
    assert out.count("data parallel: 2 processes (gloo), global batch 4, 2 per process") == 1  # rank 0 speaks

    # (a) the 2-rank checkpoint is the 1-process run's at the same step
    ref = unet_reference(models, tmp_path / "one")
    start = snapshot(ref.unet)
    ref.train(stop_at=k, progress=False)
    assert deviation(ref.unet.state_dict(), killed["model"], start) < TOL
    assert not any(key.startswith("module.") for key in killed["model"])  # the plain UNet's keys

    # (b) 2 ranks -> 1: resumed in one process, two more steps, as the uninterrupted run
    resumed = unet_reference(models, tmp_path / "two")
    resumed.load()
    assert resumed.step == k
    resumed.train(stop_at=k + 2, progress=False)
    ref.train(stop_at=k + 2, progress=False)
    assert deviation(ref.unet.state_dict(), resumed.unet.state_dict(), start) < TOL

    # (c) 1 -> 2 ranks: the 1-process checkpoint at k + 2 (ref's folder) finished by 2 ranks
    r = torchrun(2, *args, "--out", tmp_path / "one", "--resume", "--ckpt-every", "1000")
    assert r.stdout.count(f"resumed at step {k + 2}") == 1, r.stdout[-2000:]
    ref.train(progress=False)
    final = torch.load(tmp_path / "one" / "train_state.pt", weights_only=True)
    assert final["step"] == UNET_STEPS
    assert deviation(ref.unet.state_dict(), final["model"], start) < TOL
    doc = json.loads((tmp_path / "one" / "unet.json").read_text())
    assert doc["step"] == UNET_STEPS and abs(doc["history"][-1]["loss"] - ref.history[-1]["loss"]) < 1e-3


def test_batch_that_does_not_split_is_refused_before_work(models, tmp_path, monkeypatch, capsys):
    """--batch is the global batch: 3 over 2 processes is one line from rank 0, nothing from rank 1."""
    args = ["--data", str(models / "data"), "--steps", "1", "--batch", "3", "--device", "cpu"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train-unet", *args, "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch 3 does not split over 2 processes" in err and "e.g. 2 or 4" in err
    assert main(["train-gan", "--data", str(models), *args[2:], "--out", str(tmp_path / "g")]) == 2
    assert "--batch 3 does not split over 2 processes" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exc:
        main(["train-unet", *args, "--out", str(tmp_path / "u")])
    assert exc.value.code == 2 and capsys.readouterr().err == ""
    assert not (tmp_path / "u").exists() and not (tmp_path / "g").exists()


def test_each_rank_computes_its_rows_of_the_one_process_batch(models, images, tmp_path):
    """The split itself, without a launcher: rank 1 of 2 draws the global batch's randomness and
    computes exactly its rows (images, augmentations, latents, noise, D's logits with whole
    minibatch-stddev groups), not a batch of its own and not the whole batch."""
    from ganseg.training.common import Dist

    cfg = UNetTrainConfig(width=4, depth=2, batch=4, jpeg_prob=0.5, blur_prob=0.5, noise_prob=0.5)
    data = synth_data(models / "data")
    one, two = UNetTrainer(cfg, data, tmp_path / "u1"), UNetTrainer(cfg, data, tmp_path / "u2", dist=Dist(1, 2))
    for step in range(3):
        (x1, t1), (x2, t2) = one.batch_at(step), two.batch_at(step)
        assert x2.shape[0] == 2 and torch.equal(t2, t1[2:])
        torch.testing.assert_close(x2, x1[2:], atol=1e-6, rtol=0)

    g1, data = gan_reference(images, tmp_path / "g1")
    g2 = GANTrainer(g1.cfg, tmp_path / "g2", dist=Dist(1, 2))
    assert g2.share.index.tolist() == [1, 3, 5, 7] and g2.equivalent  # D groups {0,2,4,6}, {1,3,5,7}
    for t in (g1, g2):
        torch.manual_seed(5)
        t.fake = t.fakes(t.G_step).detach()
        t.aug = diff_augment(t.fake, t.share)
        t.logits = t.D(t.aug).detach()
    idx = g2.share.index
    torch.testing.assert_close(g2.fake, g1.fake[idx], atol=1e-5, rtol=0)
    torch.testing.assert_close(g2.aug, g1.aug[idx], atol=1e-5, rtol=0)
    torch.testing.assert_close(g2.logits, g1.logits[idx], atol=1e-5, rtol=0)
    assert not torch.allclose(g2.D(g1.aug[:4]), g1.logits[idx], atol=1e-3)  # other rows: other logits


# --------------------------------------------------------------------------------------------
# train-gan

def gan_reference(images, out):
    cfg = TrainGANConfig(resolution=32, channels=[16, 16, 8, 8], z_dim=16, w_dim=16, mapping_layers=2, batch=8,
                         data=str(images), precision="fp32")
    return GANTrainer(cfg, out), load_training_images(cfg)


def test_train_gan_two_ranks_equal_one_process_and_resume_across_world_sizes(images, tmp_path):
    """Batch 8 over 2 ranks keeps D's minibatch-stddev groups of 4 whole; step 0 has the lazy R1
    (a third D forward before the backward), step 1 does not."""
    args = ["train-gan", "--res", "32", "--channels", "16,16,8,8", "--z-dim", "16", "--mapping-layers", "2",
            "--batch", "8", "--precision", "fp32", "--data", images, "--device", "cpu"]
    ref, data = gan_reference(images, tmp_path / "ref")
    start = {"G": snapshot(ref.G), "D": snapshot(ref.D)}

    # (a) 2 ranks, stopped by --steps 2, equal the 1-process run at step 2
    r = torchrun(2, *args, "--steps", "2", "--out", tmp_path / "two")
    assert r.stdout.count("data parallel: 2 processes (gloo), global batch 8, 4 per process") == 1
    assert "not step-for-step" not in r.stdout
    for _ in range(2):
        ref.train_step(data)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert two["step"] == 2 and two["images_seen"] == 16
    for name in ("G", "D"):
        assert deviation(getattr(ref, name).state_dict(), two[name], start[name]) < TOL, name
    assert sorted(p.name for p in (tmp_path / "two" / "samples").iterdir()) == ["step0000002.png"]

    # (b) 2 ranks -> 1: resumed in one process to step 4, as the uninterrupted run
    resumed, _ = gan_reference(images, tmp_path / "two")
    resumed.load(resumed.ckpt_path)
    resumed.train(data, steps=4, ckpt_every=100, sample_every=100)
    for _ in range(2):
        ref.train_step(data)
    for name in ("G", "D", "G_ema"):
        base = start.get(name, start["G"])
        assert deviation(getattr(ref, name).state_dict(), getattr(resumed, name).state_dict(), base) < TOL, name

    # (c) 1 process -> 2 ranks: a 1-process checkpoint at step 2 finished by 2 ranks to step 4
    first, _ = gan_reference(images, tmp_path / "one")
    first.train(data, steps=2, ckpt_every=100, sample_every=100)
    r = torchrun(2, *args, "--steps", "4", "--resume", "--out", tmp_path / "one")
    assert r.stdout.count("resumed at step 2") == 1, r.stdout[-2000:]
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    assert one["step"] == 4 and one["images_seen"] == 32
    for name in ("G", "D", "G_ema"):
        assert deviation(getattr(ref, name).state_dict(), one[name], start.get(name, start["G"])) < TOL, name


# --------------------------------------------------------------------------------------------
# synthesize

def test_two_rank_synthesis_equals_one_process_byte_for_byte(models, tmp_path):
    # --n-images, not --n: torchrun's parser takes "--n" for an ambiguous abbreviation of its own options
    base = ["synthesize", "--ckpt", models / "g.safetensors", "--head", models / "head.safetensors", "--n-images", "40",
            "--shard-size", "8", "--batch", "4", "--soft-topk", "2", "--threads", "1", "--device", "cpu"]
    r = torchrun(2, *base, "--out", tmp_path / "two")
    assert "part 0/2" in r.stdout and "part 1/2" in r.stdout
    one = subprocess.run([sys.executable, "-m", "ganseg.cli", *map(str, base), "--out", str(tmp_path / "one")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-2000:]
    a = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    shards = sorted(n for n in a if n.startswith("shard_"))
    assert len(shards) == 5 and shards == sorted(n for n in b if n.startswith("shard_"))
    assert all(a[n] == b[n] for n in shards)  # the same bytes, whichever rank made them
    assert sorted(set(b) - set(shards)) == ["index.part0of2.json", "index.part1of2.json"]  # disjoint parts
    parts = [json.loads(b[f"index.part{i}of2.json"]) for i in range(2)]
    assert [[e["index"] for e in p["shards"]] for p in parts] == [[0, 2, 4], [1, 3]]
    assert read_manifest(tmp_path / "one")["shards"] == read_manifest(tmp_path / "two")["shards"]
    x, y = load_synth_dataset(tmp_path / "one"), load_synth_dataset(tmp_path / "two")
    for key in ("images", "labels", "seeds", "uncertainty", "topk_idx", "topk_prob"):
        np.testing.assert_array_equal(getattr(x, key), getattr(y, key))
