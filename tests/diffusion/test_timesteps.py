"""Timestep samplers, the uniform inference schedule and the detail-aware derivation."""

import json

import pytest
import torch

from gvr.diffusion.timesteps import (
    DetailAwareSampler,
    UniformSampler,
    curve_to_bins,
    dct_matrix,
    derive_detail_aware,
    high_frequency,
    inference_schedule,
)
from gvr.errors import InputError


def test_inference_schedule_is_uniform_1000_to_0():
    s = inference_schedule(50)
    assert len(s) == 51 and s[0] == 1.0 and s[-1] == 0.0
    assert [round(1000 * t) for t in s[:3]] == [1000, 980, 960]


def test_uniform_sampler_range_and_seed():
    a = UniformSampler().sample(1000, torch.Generator().manual_seed(0))
    b = UniformSampler().sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 1 and 0.45 < a.mean() < 0.55


def test_detail_aware_sampler_follows_its_histogram(tmp_path):
    probs = [0.0, 1.0, 3.0, 0.0]
    s = DetailAwareSampler(probs)
    t = s.sample(20000, torch.Generator().manual_seed(0))
    hist = torch.histc(t, bins=4, min=0, max=1) / len(t)
    assert torch.allclose(hist, torch.tensor([0.0, 0.25, 0.75, 0.0]), atol=0.02)
    s.save(tmp_path / "d.json")
    loaded = DetailAwareSampler.load(tmp_path / "d.json")
    assert loaded.probs == probs
    assert torch.equal(loaded.sample(5, torch.Generator().manual_seed(1)), s.sample(5, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("content", ["{", json.dumps({"probs": [1.0]}), json.dumps({"probs": [-1, 2]}),
                                     json.dumps({"bins": 3})])
def test_bad_distribution_files_raise_input_error(tmp_path, content):
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(InputError):
        DetailAwareSampler.load(tmp_path / "d.json")
    with pytest.raises(InputError):
        DetailAwareSampler.load(tmp_path / "missing.json")


def test_dct_is_orthonormal_and_high_frequency_separates_detail():
    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-5)
    smooth = torch.linspace(0, 1, 16)[None, :].expand(16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 1.0
    assert high_frequency(smooth, 0.5).norm() < 0.05 * high_frequency(checker, 0.5).norm()


def test_curve_to_bins_keeps_each_steps_mass_in_its_interval():
    probs = curve_to_bins([1.0, 0.5], [2.0, 1.0], steps=2, bins=10)
    assert sum(probs[5:]) == pytest.approx(2.0) and sum(probs[:5]) == pytest.approx(1.0)


def test_derive_detail_aware_puts_mass_where_detail_appears(tmp_path):
    """A model whose predicted x0 gains high-frequency detail only while t > 0.5."""
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(-1, 1, 16)[None, None, None, :, None].expand(1, 2, 1, 16, 16)
    pattern = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1.0).expand(1, 2, 1, 16, 16)

    def x0_hat(t):
        return base + min(max(2 * (1 - t), 0.0), 1.0) * pattern

    def model(z_t, t, c_t, t_c, text, mask):
        tt = t[0].item()
        return (z_t - x0_hat(tt)) / tt

    clips = [(torch.randn(1, 2, 1, 8, 8, generator=g), torch.zeros(1, 1, 4), None) for _ in range(2)]
    out = derive_detail_aware(model, clips, hr_size=(16, 16), steps=10, bins=100, uniform_floor=0.0,
                              json_path=tmp_path / "d.json", plot_path=tmp_path / "d.png")
    probs = torch.tensor(out.sampler.probs)
    assert probs[:50].sum() < 1e-6 * probs.sum() and probs[50:].sum() > 0
    assert out.clips == 2 and len(out.variation) == 10
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert DetailAwareSampler.load(tmp_path / "d.json").probs == pytest.approx(out.sampler.probs)
    t = DetailAwareSampler.load(tmp_path / "d.json").sample(1000, torch.Generator().manual_seed(0))
    assert (t >= 0.5).all()


def test_uniform_floor_keeps_every_timestep_trainable():
    """The last Euler step lands on its own x0 prediction: without a floor t < 1/steps gets no mass."""
    def model(z_t, t, c_t, t_c, text, mask):  # x0 prediction sharpens steadily as t falls
        return (z_t - (1 - t[0]) * torch.ones_like(z_t)) / t[0]

    clips = [(torch.randn(1, 2, 1, 8, 8), torch.zeros(1, 1, 4), None)]
    bare = derive_detail_aware(model, clips, hr_size=(8, 8), steps=10, bins=100, uniform_floor=0.0)
    floored = derive_detail_aware(model, clips, hr_size=(8, 8), steps=10, bins=100, uniform_floor=0.05)
    assert sum(bare.sampler.probs[:10]) == 0  # the last step's interval [0, 0.1)
    p = torch.tensor(floored.sampler.probs)
    assert p.min() >= 0.05 / 100 * 0.999 and p.sum() == pytest.approx(1.0)
    assert (floored.sampler.sample(20000, torch.Generator().manual_seed(0)) < 0.1).float().mean() > 0.004


def test_derive_detail_aware_needs_clips():
    with pytest.raises(InputError):
        derive_detail_aware(lambda *a: None, [], hr_size=(8, 8), steps=2)
