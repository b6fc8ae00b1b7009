"""The StyleGAN2 generator: shapes, feature taps, latent spaces, noise modes, ganseg format."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from ganseg import CheckpointError, Generator, GeneratorConfig, load_generator, save_generator
from ganseg.stylegan2 import upfirdn2d, upsample2d


def tiny(res=32, **kw) -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(resolution=res, z_dim=32, w_dim=32, mapping_layers=2,
                          channels=[32, 24, 16, 8, 8, 8][: len(range(2, res.bit_length()))], **kw)
    G = Generator(cfg).eval()
    with torch.no_grad():  # non-trivial noise strengths and biases so every term matters
        for m in G.synthesis.convs:
            m.noise_strength.fill_(0.3)
            m.bias.normal_(0, 0.1)
    return G


def test_config_f_1024_feature_channels():
    cfg = GeneratorConfig(resolution=1024)
    G = Generator(GeneratorConfig(resolution=1024, z_dim=8, w_dim=8, mapping_layers=1))
    info = G.feature_info
    assert cfg.num_ws == 18 and G.num_ws == 18
    assert len(info) == 17 and info[0] == ("b4.conv1", 4, 512) and info[-1] == ("b1024.conv1", 1024, 32)
    assert sum(c for _, r, c in info if r >= 8) == 5056  # ReGAN's pixel-wise representation
    assert sum(c for _, _, c in info) == 5568


@pytest.mark.parametrize("res", [8, 16, 64])
def test_shapes_and_features_match_feature_info(res):
    G = tiny(res)
    img, feats = G.synthesize_features(z=torch.randn(3, 32), truncation_psi=0.7)
    assert img.shape == (3, 3, res, res)
    assert [tuple(f.shape) for f in feats] == [(3, c, r, r) for _, r, c in G.feature_info]
    assert torch.isfinite(img).all()


def test_batch_equals_single_images():
    G = tiny()
    z = torch.randn(4, 32)
    batch = G.synthesize(z=z)
    single = torch.cat([G.synthesize(z=z[i: i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)


def test_latent_spaces_agree():
    G = tiny()
    z = torch.randn(2, 32)
    ws = G.map(z, truncation_psi=0.5)
    torch.testing.assert_close(G.synthesize(z=z, truncation_psi=0.5), G.synthesize(w=ws))
    w = G.mapping(z)
    torch.testing.assert_close(G.synthesize(w=w), G.synthesize(z=z))
    # psi = 0 puts every z at w_avg: identical images
    G.mapping.w_avg.normal_()
    img = G.synthesize(z=torch.randn(2, 32), truncation_psi=0.0)
    torch.testing.assert_close(img[0], img[1])
    # W+ with different per-layer latents changes the image
    mixed = ws.clone()
    mixed[:, 4:] = G.map(torch.randn(2, 32))[:, 4:]
    assert (G.synthesize(w=mixed) - G.synthesize(w=ws)).abs().max() > 1e-3


def test_noise_modes():
    G = tiny()
    z = torch.randn(2, 32)
    const = G.synthesize(z=z, noise_mode="const")
    torch.testing.assert_close(const, G.synthesize(z=z, noise_mode="const"))
    assert (G.synthesize(z=z, noise_mode="random") - const).abs().max() > 1e-4
    assert (G.synthesize(z=z, noise_mode="none") - const).abs().max() > 1e-4
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesize(z=z, noise_mode="bogus")


def test_bad_inputs_are_named():
    G = tiny()
    with pytest.raises(ValueError, match="z must have shape"):
        G.synthesize(z=torch.randn(2, 31))
    with pytest.raises(ValueError, match="w must be"):
        G.synthesize(w=torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match="exactly one"):
        G.synthesize()
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(resolution=48)


def test_upsample_preserves_constant_and_doubles_size():
    x = torch.full((1, 2, 4, 4), 3.0)
    k = torch.tensor([[1.0, 3, 3, 1]]).T @ torch.tensor([[1.0, 3, 3, 1]])
    y = upsample2d(x, k / k.sum())
    assert y.shape == (1, 2, 8, 8)
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full((1, 2, 4, 4), 3.0))
    # upfirdn2d with a delta kernel is the identity
    delta = torch.zeros(3, 3)
    delta[1, 1] = 1
    x = torch.randn(1, 1, 5, 5)
    torch.testing.assert_close(upfirdn2d(x, delta, pad=(1, 1)), x)


def test_ganseg_format_roundtrip(tmp_path):
    G = tiny()
    path = tmp_path / "g.safetensors"
    save_generator(G, path)
    G2 = load_generator(path)
    assert G2.cfg == G.cfg and not G2.training
    z = torch.randn(2, 32)
    img, feats = G.synthesize_features(z=z)
    img2, feats2 = G2.synthesize_features(z=z)
    assert torch.equal(img, img2) and all(torch.equal(a, b) for a, b in zip(feats, feats2))
    save_generator(G, tmp_path / "g16.safetensors", dtype=torch.float16)  # shipping format
    assert (load_generator(tmp_path / "g16.safetensors").synthesize(z=z) - img).abs().max() < 0.05


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="empty or truncated"):
        load_generator(bad)
    bad.write_bytes(b"hello, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a recognised checkpoint"):
        load_generator(bad)
    G = tiny()
    save_generator(G, tmp_path / "g.safetensors")
    data = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_generator(tmp_path / "cut.safetensors")


def test_sample_cli(tmp_path):
    G = tiny()
    save_generator(G, tmp_path / "g.safetensors")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "ganseg.cli", "sample", "--ckpt", str(tmp_path / "g.safetensors"),
                        "--seeds", "0-2,7", "--truncation", "0.7", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "latents.safetensors", "seed0000.png",
                                                      "seed0001.png", "seed0002.png", "seed0007.png"]
    from ganseg.latents import load_latents, z_from_seeds

    lat, info = load_latents(out / "latents.safetensors")
    assert info["truncation_psi"] == 0.7 and info["noise_mode"] == "const"
    assert lat["seeds"].tolist() == [0, 1, 2, 7] and lat["w"].shape == (4, G.num_ws, 32)
    torch.testing.assert_close(lat["z"][3], z_from_seeds([7], 32)[0])  # seed -> z is batch-independent
    # the stored w reproduces the saved image
    from PIL import Image
    from ganseg.images import to_uint8

    img = to_uint8(G.synthesize(w=lat["w"][3:4]))[0]
    assert np.abs(img.astype(int) - np.asarray(Image.open(out / "seed0007.png")).astype(int)).max() <= 1

    r = subprocess.run([sys.executable, "-m", "ganseg.cli", "sample", "--ckpt", str(tmp_path / "missing.pt"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr
