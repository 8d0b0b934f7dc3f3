"""Latent upsampler and its ablations: the (B, C, T, h, w) -> (B, C, T, H, W) contract and time mapping."""

import pytest
import torch
import torch.nn.functional as F

from gvr.models.upsampler import (
    LatentInterpolate,
    LatentUpsampler,
    build_upsampler,
    fold_time,
    resize_frames,
    unfold_time,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["upsampler", "resblock_interpolate", "interpolate"])
@pytest.mark.parametrize("t, lr, hr", [(1, (4, 6), (8, 12)), (5, (6, 10), (17, 23)), (2, (8, 8), (5, 5))])
def test_contract_any_ratio_and_length(kind, t, lr, hr):
    up = build_upsampler(kind, channels=16, hidden=8)
    c = torch.randn(2, 16, t, *lr)
    out = up(c, hr)
    assert out.shape == (2, 16, t, *hr) and torch.isfinite(out).all()


def test_token_concat_has_no_upsampler():
    assert build_upsampler("token_concat", 16, 8) is None
    with pytest.raises(ValueError):
        build_upsampler("nearest", 16, 8)


def test_unfold_time_maps_each_latent_frame_to_its_rgb_frames():
    """Causal 4x codec: latent frame 0 <- RGB frame 0, latent frame k <- RGB frames 4k-3 .. 4k."""
    t, r = 5, 4
    x = torch.arange(t).float().view(1, 1, t, 1, 1).repeat(1, r, 1, 1, 1)  # every sub-frame holds its step
    y = unfold_time(x, r)
    assert y.shape[2] == r * (t - 1) + 1 == 17
    assert y.flatten().tolist() == [0.0] + [float(k) for k in range(1, t) for _ in range(r)]


def test_fold_time_inverts_unfold_time():
    x = torch.randn(2, 4 * 3, 5, 2, 2)
    back = fold_time(unfold_time(x, 4), 4)
    assert back.shape == x.shape
    assert torch.equal(back[:, :, 1:], x[:, :, 1:])  # latent frame 0 kept only its last sub-frame
    assert torch.equal(back[:, :, 0].view(2, 3, 4, 2, 2)[:, :, -1], x[:, :, 0].view(2, 3, 4, 2, 2)[:, :, -1])


def test_upsampler_is_local_in_time():
    """Eight 3x3x3 convs at the latent rate: a latent frame reaches at most 8 latent frames each way, so
    outputs do not depend on the clip's length or on distant frames (long videos, chunking)."""
    up = LatentUpsampler(16, 8).eval()
    c = torch.randn(1, 16, 20, 4, 4)
    c2 = c.clone()
    c2[:, :, 10] += 1.0
    with torch.no_grad():
        diff = (up(c, (8, 8)) - up(c2, (8, 8))).abs().amax(dim=(0, 1, 3, 4))
        assert diff[10] > 0 and diff[:2].max() == 0 and diff[19] == 0
        assert torch.allclose(up(c[:, :, :12], (8, 8))[:, :, :3], up(c, (8, 8))[:, :, :3], atol=1e-5)


def test_interpolation_is_bilinear_per_frame():
    c = torch.randn(1, 4, 3, 5, 7)
    out = LatentInterpolate()(c, (11, 13))
    for f in range(3):
        ref = F.interpolate(c[:, :, f], size=(11, 13), mode="bilinear", align_corners=False)
        assert torch.allclose(out[:, :, f], ref)
    assert torch.allclose(resize_frames(torch.ones(1, 2, 2, 3, 3), (7, 9)), torch.ones(1, 2, 2, 7, 9))


def test_upsampler_trains():
    up = LatentUpsampler(16, 8)
    up(torch.randn(1, 16, 2, 4, 4), (8, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in up.parameters())
