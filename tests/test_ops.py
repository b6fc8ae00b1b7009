"""Fused resample-accumulate vs the materialized reference: forward and backward parity."""
import pytest
import torch

from ganseg.ops import materialize, resample_accumulate, resample_accumulate_reference


def random_feats(n=2, layout=((4, 6), (8, 5), (8, 7), (16, 3), (32, 4), (32, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, r, r, generator=g, dtype=torch.float64) for r, c in layout]


@pytest.mark.parametrize("size", [16, 32, 64])  # down (area) for 32² maps at 16, identity, all up
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("k", [5, 24])  # both layouts: NCHW below 16 output channels, NHWC from 16
def test_forward_backward_parity(size, align_corners, k):
    feats = random_feats()
    weight = torch.randn(k, sum(f.shape[1] for f in feats), dtype=torch.float64)
    bias = torch.randn(k, dtype=torch.float64)
    leaves = [f.clone().requires_grad_(True) for f in feats] + [weight.clone().requires_grad_(True),
                                                                 bias.clone().requires_grad_(True)]
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = resample_accumulate(leaves[:-2], leaves[-2], leaves[-1], size, align_corners)
    ref = resample_accumulate_reference(ref_leaves[:-2], ref_leaves[-2], ref_leaves[-1], size, align_corners)
    assert out.shape == (2, k, size, size)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_fp32_relative_error():
    feats = [f.float() for f in random_feats(layout=((4, 64), (8, 64), (16, 32), (32, 16), (64, 8)))]
    weight = torch.randn(16, 184) * 0.1
    out = resample_accumulate(feats, weight, None, 64)
    ref = resample_accumulate_reference(feats, weight, None, 64)
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_materialize_layout_and_errors():
    feats = random_feats()
    stack = materialize(feats, 32)
    assert stack.shape == (2, sum(f.shape[1] for f in feats), 32, 32)
    with pytest.raises(ValueError, match="input channels"):
        resample_accumulate(feats, torch.randn(3, 5), None, 32)
    with pytest.raises(ValueError, match="feature 1"):
        resample_accumulate([feats[0], feats[1][:1]], torch.randn(3, 13), None, 32)
