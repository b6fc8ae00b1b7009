"""Auto-shot stage: sharded, resumable dataset synthesis and the distilled UNet, on a tiny generator."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ganseg import Generator, GeneratorConfig, load_generator, save_generator
from ganseg.cli import main
from ganseg.heads import HeadEnsemble, head_for, load_head, save_head
from ganseg.synthesize import (SynthConfig, load_synth_dataset, parse_part, part_from_env, read_manifest,
                               synthesize_dataset)
from ganseg.training.train_unet import UNetTrainConfig, UNetTrainer, synth_data
from ganseg.unet import load_unet, segment_with_unet


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random generator and an untrained linear head, on disk (the CLI and the library load the same bytes)."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channels=[16, 16, 8, 8]))
    save_generator(G, d / "g.safetensors")
    save_head(head_for(G, "linear", 10), d / "head.safetensors")
    return d / "g.safetensors", d / "head.safetensors"


@pytest.fixture(scope="module")
def models(files):
    return load_generator(files[0]), load_head(files[1])


def cli_env():
    # same thread count in every process: bit-identical floats across processes
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def synth_cmd(files, out, n, *extra):
    return [sys.executable, "-m", "ganseg.cli", "synthesize", "--ckpt", str(files[0]), "--head", str(files[1]),
            "--n", str(n), "--shard-size", "8", "--batch", "4", "--soft-topk", "2", "--threads", "1",
            "--out", str(out), *extra]


def dir_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_killed_synthesis_resumes_to_the_uninterrupted_dataset(files, tmp_path):
    n = 160  # 20 shards: the run lasts long enough after its first shard to be killed mid-way
    ref = subprocess.Popen(synth_cmd(files, tmp_path / "ref", n), env=cli_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = subprocess.Popen(synth_cmd(files, tmp_path / "run", n), env=cli_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "run" / "index.json").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()[-2000:]

    done = read_manifest(tmp_path / "run")["shards"]
    assert 0 < len(done) < 20, "the kill should land between the first and the last shard"
    # what a crash can leave: a stray half-written temp file, an unlisted garbage file under a shard's
    # final name, and a listed shard whose data did not survive (e.g. power loss before writeback)
    (tmp_path / "run" / ".shard_00019.safetensors.k1ll3d.tmp").write_bytes(b"\0" * 1000)
    nxt = tmp_path / "run" / f"shard_{len(done):05d}.safetensors"
    nxt.write_bytes(b"garbage")
    last = tmp_path / "run" / done[-1]["file"]
    last.write_bytes(last.read_bytes()[:100])

    resumed = subprocess.run(synth_cmd(files, tmp_path / "run", n), env=cli_env(), capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    a, b = dir_bytes(tmp_path / "ref"), dir_bytes(tmp_path / "run")
    assert sorted(a) == sorted(b)  # no temp files left, nothing extra
    assert len([k for k in a if k.startswith("shard_")]) == 20
    for name in a:
        assert a[name] == b[name], name  # shards and index.json, byte for byte
    ds = load_synth_dataset(tmp_path / "run")
    assert len(ds) == n and ds.complete_shards == ds.num_shards == 20
    assert ds.images.shape == (n, 32, 32, 3) and ds.labels.shape == (n, 32, 32)
    assert ds.topk_idx.shape == (n, 2, 32, 32) and ds.topk_prob.dtype == np.float16
    assert (ds.labels == ds.topk_idx[:, 0]).all()  # the hard label is the most likely class
    np.testing.assert_array_equal(ds.seeds, np.arange(n))


def test_shard_parts_together_equal_the_unsharded_dataset(models, tmp_path, monkeypatch):
    G, head = models
    cfg = SynthConfig(n=40, shard_size=8, batch=3, soft_topk=2)  # 5 shards: parts of 3 and 2
    synthesize_dataset(G, head, cfg, tmp_path / "one", progress=False)
    synthesize_dataset(G, head, cfg, tmp_path / "two", part=(0, 2), progress=False)
    partial = load_synth_dataset(tmp_path / "two")
    assert (partial.complete_shards, partial.num_shards, len(partial)) == (3, 5, 24)
    synthesize_dataset(G, head, cfg, tmp_path / "two", part=part_from_env({"RANK": "1", "WORLD_SIZE": "2"}),
                       progress=False)
    one, two = dir_bytes(tmp_path / "one"), dir_bytes(tmp_path / "two")
    assert sorted(two) == sorted([k for k in one if k != "index.json"] + ["index.part0of2.json", "index.part1of2.json"])
    for name in one:
        if name.startswith("shard_"):
            assert one[name] == two[name], name
    assert read_manifest(tmp_path / "one")["shards"] == read_manifest(tmp_path / "two")["shards"]
    a, b = load_synth_dataset(tmp_path / "one"), load_synth_dataset(tmp_path / "two")
    for key in ("images", "labels", "seeds", "uncertainty", "topk_idx", "topk_prob"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    # a finished dataset is left alone: no shard is made again
    def fail(*a, **k):
        raise AssertionError("a complete shard was regenerated")
    monkeypatch.setattr("ganseg.synthesize.make_shard", fail)
    before = dir_bytes(tmp_path / "one")
    synthesize_dataset(G, head, cfg, tmp_path / "one", progress=False)
    synthesize_dataset(G, head, cfg, tmp_path / "one", part=(1, 2), progress=False)  # complete per index.json
    assert dir_bytes(tmp_path / "one").items() >= before.items()


def test_uncertainty_filter_excludes_and_records(models, tmp_path):
    G, head = models
    full_m = synthesize_dataset(G, head, SynthConfig(n=24, shard_size=8, batch=8), tmp_path / "full", progress=False)
    full = load_synth_dataset(tmp_path / "full")
    u = float(np.median(full.uncertainty))
    m = synthesize_dataset(G, head, SynthConfig(n=24, shard_size=8, batch=8, max_uncertainty=u),
                           tmp_path / "filt", progress=False)
    excluded = np.array([x for e in m["shards"] for x in e["excluded"]])
    np.testing.assert_array_equal(excluded, full.uncertainty > u)
    assert 0 < excluded.sum() < 24
    # excluded images stay in the manifest with their seed, uncertainty and class histogram
    assert [s for e in m["shards"] for s in e["seeds"]] == list(range(24))
    assert [h for e in m["shards"] for h in e["histogram"]] == [h for e in full_m["shards"] for h in e["histogram"]]
    filt = load_synth_dataset(tmp_path / "filt")
    keep = full.uncertainty <= u
    np.testing.assert_array_equal(filt.seeds, full.seeds[keep])
    np.testing.assert_array_equal(filt.images, full.images[keep])
    np.testing.assert_array_equal(filt.labels, full.labels[keep])
    assert (filt.uncertainty <= u).all()
    stricter = float(np.quantile(full.uncertainty, 0.25))
    np.testing.assert_array_equal(load_synth_dataset(tmp_path / "full", max_uncertainty=stricter).seeds,
                                  full.seeds[full.uncertainty <= stricter])
    # an ensemble's own uncertainty is used (two identical heads: the single head's entropy)
    ens = HeadEnsemble([head, head]).eval()
    synthesize_dataset(G, ens, SynthConfig(n=24, shard_size=8, batch=8), tmp_path / "ens", progress=False)
    np.testing.assert_allclose(load_synth_dataset(tmp_path / "ens").uncertainty, full.uncertainty, rtol=1e-5)
    assert read_manifest(tmp_path / "ens")["dataset"]["head"]["uncertainty"] == "ensemble"
    # the same folder cannot be continued with other settings
    with pytest.raises(ValueError, match="max_uncertainty"):
        synthesize_dataset(G, head, SynthConfig(n=24, shard_size=8, max_uncertainty=u / 2), tmp_path / "filt",
                           progress=False)


def test_train_unet_checkpoints_resumes_and_segments(models, files, tmp_path, capsys):
    G, head = models
    synthesize_dataset(G, head, SynthConfig(n=16, shard_size=8, batch=8, soft_topk=3), tmp_path / "data",
                       progress=False)
    data = synth_data(tmp_path / "data", soft=True)
    cfg = UNetTrainConfig(width=4, depth=2, steps=4, batch=4, soft=True, val_fraction=0.2, val_every=2,
                          ckpt_every=2, jpeg_prob=0.5, blur_prob=0.5, noise_prob=0.5)
    straight = UNetTrainer(cfg, data, tmp_path / "a")
    straight.train(progress=False)
    first = UNetTrainer(cfg, data, tmp_path / "b")
    first.train(stop_at=2, progress=False)  # as if killed after the step-2 checkpoint
    assert (tmp_path / "b" / "train_state.pt").is_file() and (tmp_path / "b" / "unet.safetensors").is_file()
    resumed = UNetTrainer(cfg, data, tmp_path / "b")
    resumed.load()
    assert resumed.step == 2
    resumed.train(progress=False)
    a, b = straight.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(straight.val_data) >= 1 and straight.history[-1]["val_miou"] is not None

    unet = load_unet(tmp_path / "b")
    assert unet.class_names == data.class_names and unet.meta["step"] == 4
    labels = segment_with_unet(unet, data.images[:5].numpy())
    assert labels.shape == (5, 32, 32) and labels.dtype == np.uint8 and labels.max() < 10
    assert segment_with_unet(unet, data.images[:2, :30, :28].numpy()).shape == (2, 30, 28)  # padded inside

    # the CLI: hard labels, then --resume to more steps
    common = ["train-unet", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "c"), "--width", "4",
              "--depth", "2", "--batch", "2", "--ckpt-every", "1", "--val-every", "1"]
    assert main(common + ["--steps", "1"]) == 0
    assert main(common + ["--steps", "2", "--resume"]) == 0
    assert json.loads((tmp_path / "c" / "unet.json").read_text())["step"] == 2
    assert "resumed at step 1" in capsys.readouterr().out


def test_train_unet_on_real_labelled_images(tmp_path):
    from ganseg.faces import render_faces
    from ganseg.labels import save_label_png, write_labels_json
    from ganseg.images import save_png

    images, labels = render_faces([0, 1, 2, 3], resolution=64)
    for i, (im, lab) in enumerate(zip(images, labels)):
        save_png(tmp_path / "real" / f"{i:04d}.png", im)
        save_label_png(tmp_path / "real" / f"{i:04d}_mask.png", lab)
    write_labels_json(tmp_path / "real" / "labels.json")
    assert main(["train-unet", "--real", str(tmp_path / "real"), "--out", str(tmp_path / "u"), "--width", "4",
                 "--depth", "2", "--steps", "1", "--batch", "2"]) == 0
    unet = load_unet(tmp_path / "u" / "unet.safetensors")
    assert segment_with_unet(unet, images).shape == (4, 64, 64) and unet.meta["resolution"] == 64

    # the deployable path: `ganseg segment --unet` on photos of any size; masks at each photo's size
    from PIL import Image
    from ganseg.labels import load_label_png

    Image.fromarray(images[1]).resize((100, 80)).save(tmp_path / "big.jpg")
    assert main(["segment", "--unet", str(tmp_path / "u"), str(tmp_path / "real" / "0000.png"),
                 str(tmp_path / "big.jpg"), "--out", str(tmp_path / "seg")]) == 0
    assert load_label_png(tmp_path / "seg" / "0000_mask.png").shape == (64, 64)
    assert load_label_png(tmp_path / "seg" / "big_mask.png").shape == (80, 100)
    assert (tmp_path / "seg" / "big_overlay.jpg").is_file() and (tmp_path / "seg" / "overlays.png").is_file()
    # a corrupt photo is named, and nothing is written for the batch
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["segment", "--unet", str(tmp_path / "u"), str(tmp_path / "real" / "0001.png"),
                 str(tmp_path / "bad.png"), "--out", str(tmp_path / "seg2")]) == 2
    assert not (tmp_path / "seg2").exists()
    # no --unet: the bundled default UNet (docs/default_unet.md), masks still at the photo's size
    assert main(["segment", "--method", "unet", str(tmp_path / "big.jpg"), "--out", str(tmp_path / "s3")]) == 0
    assert load_label_png(tmp_path / "s3" / "big_mask.png").shape == (80, 100)


def test_bad_inputs_give_clear_errors(models, tmp_path, capsys):
    G, head = models
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_synth_dataset(missing)
    assert main(["train-unet", "--data", str(missing), "--out", str(tmp_path / "u"), "--steps", "1"]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a synthesized dataset"):
        load_synth_dataset(tmp_path / "empty")

    synthesize_dataset(G, head, SynthConfig(n=16, shard_size=8, batch=8), tmp_path / "d", progress=False)
    shard = tmp_path / "d" / "shard_00001.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the pixels
    shard.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="shard_00001.safetensors.*corrupt"):
        load_synth_dataset(tmp_path / "d")
    assert main(["train-unet", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "u"), "--steps", "1"]) == 2
    assert "shard_00001.safetensors" in capsys.readouterr().err
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard_00001.safetensors.*missing"):
        load_synth_dataset(tmp_path / "d")
    (tmp_path / "d" / "index.json").write_text("{ half a manif")
    with pytest.raises(ValueError, match="index.json"):
        load_synth_dataset(tmp_path / "d")
    with pytest.raises(ValueError, match="--shard"):
        parse_part("3/2")
    synthesize_dataset(G, head, SynthConfig(n=8, shard_size=8, batch=8), tmp_path / "hard", progress=False)
    with pytest.raises(ValueError, match="soft-topk"):
        synth_data(tmp_path / "hard", soft=True)
