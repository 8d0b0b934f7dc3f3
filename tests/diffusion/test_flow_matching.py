"""Rectified flow: noising path, loss inputs (noise augmentation, null prompts), Euler sampler, CFG."""

import pytest
import torch

from gvr.diffusion.flow_matching import (
    add_noise,
    drop_prompts,
    euler_sample,
    predict_x0,
    training_loss,
    velocity_target,
)
from gvr.diffusion.timesteps import UniformSampler


class Recorder(torch.nn.Module):
    """A velocity 'model' that records its inputs and returns a fixed function of them."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, z_t, t, c_t, t_c, text, text_mask):
        self.calls.append(dict(z_t=z_t, t=t, c_t=c_t, t_c=t_c, text=text, text_mask=text_mask))
        return self.w * z_t


def batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, 2, 8, 8, generator=g), torch.randn(b, 4, 2, 4, 4, generator=g),
            torch.randn(b, 6, 8, generator=g), torch.ones(b, 6, dtype=torch.bool))


def test_add_noise_path_endpoints_and_per_sample_t():
    z0, noise = torch.randn(3, 2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2)
    assert torch.equal(add_noise(z0, noise, 0.0), z0) and torch.equal(add_noise(z0, noise, 1.0), noise)
    t = torch.tensor([0.0, 0.5, 1.0])
    zt = add_noise(z0, noise, t)
    assert torch.allclose(zt[1], 0.5 * z0[1] + 0.5 * noise[1])
    assert torch.equal(zt[0], z0[0]) and torch.equal(zt[2], noise[2])


def test_velocity_target_is_the_path_derivative():
    z0, noise = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64), torch.randn(2, 3, 1, 4, 4, dtype=torch.float64)
    h = 1e-6
    fd = (add_noise(z0, noise, 0.4 + h) - add_noise(z0, noise, 0.4 - h)) / (2 * h)
    assert torch.allclose(fd, velocity_target(z0, noise), atol=1e-6)
    zt = add_noise(z0, noise, 0.7)
    assert torch.allclose(predict_x0(zt, 0.7, velocity_target(z0, noise)), z0)


def test_euler_integrates_a_linear_velocity_field_exactly():
    """v(z, t) = (z - a) / t is the straight path to a: Euler lands on a exactly, for any step count."""
    a = torch.randn(2, 4, 2, 8, 8)

    def model(z_t, t, c_t, t_c, text, mask):
        return (z_t - a) / t.view(-1, 1, 1, 1, 1)

    c0, _, text, mask = batch(2)
    for steps in (1, 7, 50):
        z0 = euler_sample(model, c0, text, mask, steps=steps, noise_aug=0.3, hr_shape=a.shape,
                          generator=torch.Generator().manual_seed(0))
        assert torch.allclose(z0, a, atol=1e-5), steps


def test_euler_visits_the_uniform_schedule_and_is_seeded():
    seen = []
    _, c0, text, mask = batch(2)

    def model(z_t, t, c_t, t_c, text, mask):
        seen.append((t[0].item(), t_c[0].item(), c_t))
        return torch.zeros_like(z_t)

    out1 = euler_sample(model, c0, text, mask, steps=50, noise_aug=0.3, hr_shape=(2, 4, 2, 8, 8),
                        generator=torch.Generator().manual_seed(7))
    assert [round(1000 * t) for t, _, _ in seen] == list(range(1000, 0, -20))
    assert all(abs(tc - 0.3) < 1e-6 for _, tc, _ in seen)
    assert all(c is seen[0][2] or torch.equal(c, seen[0][2]) for _, _, c in seen)  # LR condition fixed
    out2 = euler_sample(model, c0, text, mask, steps=50, noise_aug=0.3, hr_shape=(2, 4, 2, 8, 8),
                        generator=torch.Generator().manual_seed(7))
    out3 = euler_sample(model, c0, text, mask, steps=50, noise_aug=0.3, hr_shape=(2, 4, 2, 8, 8),
                        generator=torch.Generator().manual_seed(8))
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)


def test_classifier_free_guidance_combines_conditional_and_null():
    _, c0, text, mask = batch(2)
    null = torch.zeros(1, 3, 8)

    def model(z_t, t, c_t, t_c, text, mask):  # velocity = mean of the prompt embedding
        return text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).expand_as(z_t)

    kw = dict(steps=1, noise_aug=0.3, hr_shape=(2, 4, 2, 8, 8))
    base = euler_sample(model, c0, text, mask, generator=torch.Generator().manual_seed(0), **kw)
    guided = euler_sample(model, c0, text, mask, guidance=3.0, null_text=null, null_mask=None,
                          generator=torch.Generator().manual_seed(0), **kw)
    noise = torch.randn(2, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    v_c = text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
    assert torch.allclose(base, noise - v_c, atol=1e-5)
    assert torch.allclose(guided, noise - 3.0 * v_c, atol=1e-5)  # null prompt's velocity is 0
    with pytest.raises(ValueError):
        euler_sample(model, c0, text, mask, guidance=2.0, **kw)


def test_noise_augmentation_changes_only_the_lr_branch():
    z0, c0, text, mask = batch()
    runs = []
    for aug in ((0.0, 0.0), (0.5, 0.5)):
        m = Recorder()
        training_loss(m, z0, c0, text, mask, null_text=torch.zeros(1, 6, 8), null_mask=None,
                      t_sampler=UniformSampler(), noise_aug=aug, null_prompt_prob=0.0,
                      generator=torch.Generator().manual_seed(3))
        runs.append(m.calls[0])
    clean, noisy = runs
    assert torch.equal(clean["z_t"], noisy["z_t"]) and torch.equal(clean["t"], noisy["t"])
    assert torch.equal(clean["c_t"], c0)  # t_c = 0 leaves the LR latent untouched
    assert not torch.allclose(noisy["c_t"], c0) and torch.allclose(noisy["t_c"], torch.full((4,), 0.5))
    lr_noise = (noisy["c_t"] - 0.5 * c0) / 0.5
    hr_noise = (clean["z_t"] - (1 - clean["t"].view(-1, 1, 1, 1, 1)) * z0) / clean["t"].view(-1, 1, 1, 1, 1)
    assert abs(torch.corrcoef(torch.stack([lr_noise.flatten(), hr_noise[:, :, :, :4, :4].flatten()]))[0, 1]) < 0.2


def test_loss_is_mse_to_the_velocity_target_with_t_c_in_range():
    z0, c0, text, mask = batch(b=64)
    m = Recorder()
    loss, stats = training_loss(m, z0, c0, text, mask, null_text=torch.zeros(1, 6, 8), null_mask=None,
                                t_sampler=UniformSampler(), generator=torch.Generator().manual_seed(0))
    call = m.calls[0]
    t = call["t"].view(-1, 1, 1, 1, 1)
    noise = (call["z_t"] - (1 - t) * z0) / t
    assert torch.allclose(loss, ((call["z_t"] - (noise - z0)) ** 2).mean(), rtol=1e-3)
    assert ((call["t_c"] >= 0.3) & (call["t_c"] <= 0.6)).all()
    assert set(stats) == {"loss", "t", "t_c", "null_prompt"}
    loss.backward()
    assert m.w.grad is not None


def test_null_prompts_replace_text_at_the_given_rate():
    z0, c0, text, mask = batch(b=400)
    null, null_mask = torch.full((1, 2, 8), 9.0), torch.ones(1, 2, dtype=torch.bool)
    m = Recorder()
    _, stats = training_loss(m, z0, c0, text, mask, null_text=null, null_mask=null_mask,
                             t_sampler=UniformSampler(), null_prompt_prob=0.1,
                             generator=torch.Generator().manual_seed(0))
    call = m.calls[0]
    dropped = (call["text"][:, 0, 0] == 9.0)
    assert 0.05 < dropped.float().mean() < 0.15 and stats["null_prompt"] == dropped.float().mean()
    # the null prompt is padded to the batch's length with masked-out tokens
    assert (call["text_mask"][dropped, 2:] == 0).all() and call["text_mask"][dropped, :2].all()
    assert torch.equal(call["text"][~dropped], text[~dropped])


def test_drop_prompts_cuts_a_longer_null_prompt():
    text, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    out, out_mask = drop_prompts(text, mask, torch.ones(1, 5, 4), None, torch.tensor([True, False]))
    assert out.shape == (2, 3, 4) and torch.equal(out[0], torch.ones(3, 4)) and torch.equal(out[1], text[1])
