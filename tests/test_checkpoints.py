"""Parity with the original implementations, on checkpoints they wrote (tests/fixtures).

Fixtures were made by tests/make_reference_fixtures.py, running rosinality/stylegan2-pytorch and
NVlabs/stylegan2-ada-pytorch locally: tiny generators with non-default channel widths, every
parameter and buffer randomized, a conv_clamp that really clips (NVlabs), and the images and
per-layer activations those implementations produced (fp32, CPU).
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ganseg import CheckpointError, load_generator

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-4


@pytest.fixture(scope="module", params=["rosinality_32.pt", "nvlabs_32.pkl"])
def case(request):
    G = load_generator(FIX / request.param)
    ref = load_file(str(FIX / (request.param.rsplit(".", 1)[0] + "_ref.safetensors")))
    return G, ref


def max_err(a, b):
    return (a - b).abs().max().item()


def test_mapping_and_truncation(case):
    G, ref = case
    assert max_err(G.map(ref["z"], truncation_psi=0.7), ref["ws_psi07"]) <= TOL
    assert max_err(G.map(ref["z"]), ref["ws_psi10"]) <= TOL


def test_images_and_every_feature(case):
    G, ref = case
    img, feats = G.synthesize_features(z=ref["z"], truncation_psi=0.7, noise_mode="const")
    assert max_err(img, ref["img_psi07"]) <= TOL
    n_ref = len([k for k in ref if k.startswith("feat_psi07_")])
    assert len(feats) == n_ref == len(G.feature_info)
    for i, f in enumerate(feats):
        assert max_err(f, ref[f"feat_psi07_{i:02d}"]) <= TOL, G.feature_info[i]
    assert max_err(G.synthesize(z=ref["z"], noise_mode="const"), ref["img_psi10"]) <= TOL


def test_wplus_and_noise_off(case):
    G, ref = case
    assert max_err(G.synthesize(w=ref["wplus"], noise_mode="const"), ref["img_wplus"]) <= TOL
    assert max_err(G.synthesize(w=ref["ws_psi07"], noise_mode="none"), ref["img_none"]) <= TOL


def test_widths_read_from_checkpoint():
    assert [c for _, _, c in load_generator(FIX / "rosinality_32.pt").feature_info] == [64, 48, 48, 32, 32, 16, 16]
    G = load_generator(FIX / "nvlabs_32.pkl")
    assert [c for _, _, c in G.feature_info] == [48, 48, 48, 32, 32, 16, 16]
    assert G.cfg.conv_clamp == 256 and G.cfg.mapping_layers == 2


class Payload:
    """Unpickling this runs `touch marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_malicious_torch_file_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"g_ema": Payload(marker)}, bad)
    with pytest.raises(CheckpointError, match="refused.*(posix|os).system"):
        load_generator(bad)
    assert not marker.exists()


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"G_ema": Payload(marker)}))
    with pytest.raises(CheckpointError, match="refused.*system"):
        load_generator(bad)
    assert not marker.exists()


def test_truncated_fixture_gives_clear_error(tmp_path):
    for name in ("nvlabs_32.pkl", "rosinality_32.pt"):
        data = (FIX / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 3])
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_generator(cut)


def test_legacy_torch_serialization_loads(tmp_path):
    ckpt = torch.load(FIX / "rosinality_32.pt", weights_only=False)  # our own fixture: trusted
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    ref = load_file(str(FIX / "rosinality_32_ref.safetensors"))
    G = load_generator(legacy)
    assert max_err(G.synthesize(z=ref["z"], truncation_psi=0.7), ref["img_psi07"]) <= TOL
