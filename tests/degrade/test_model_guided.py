"""Model-guided (SDEdit) degradation against analytic stand-ins for the base T2V model."""

import math

import pytest
import torch

from gvr.degrade.model_guided import GuidedBase, degrade_latent, degrade_latents, sdedit_steps
from gvr.errors import InputError
from gvr.models.base import BaseT2V

C, D, L = 4, 8, 5


class PointMassBase(BaseT2V):
    """Exact velocity when every video is `target`: `v = (x_t - target) / t`."""

    latent_channels, text_dim = C, D

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target = target

    def velocity(self, x_t, t, text_emb, text_mask):
        self.check_inputs(x_t, t, text_emb, text_mask)
        return (x_t - self.target) / t.view(-1, 1, 1, 1, 1)


class GaussianBase(BaseT2V):
    """Exact velocity `E[eps - x0 | x_t]` for data `x0 ~ N(mean, std^2)` per element."""

    latent_channels, text_dim = C, D

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean, self.var = mean, std**2

    def velocity(self, x_t, t, text_emb, text_mask):
        t = t.view(-1, 1, 1, 1, 1)
        r = x_t - (1 - t) * self.mean
        denom = (1 - t) ** 2 * self.var + t**2
        eps = t * r / denom
        x0 = self.mean + (1 - t) * self.var * r / denom
        return eps - x0


class RecordingBase(PointMassBase):
    """Point-mass base that remembers every call."""

    def __init__(self, target):
        super().__init__(target)
        self.calls = []

    def velocity(self, x_t, t, text_emb, text_mask):
        self.calls.append((t.clone(), text_emb.clone(), text_mask.clone()))
        return super().velocity(x_t, t, text_emb, text_mask)


def latent(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, C, 3, 6, 8, generator=g)


def text(b=2):
    return torch.randn(b, L, D), torch.ones(b, L, dtype=torch.bool)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("alpha, steps", [(0.3, 50), (0.4, 7), (1.0, 3)])
def test_denoises_onto_the_model_distribution(alpha, steps):
    target = latent(seed=1)
    emb, mask = text()
    out = degrade_latent(latent(), PointMassBase(target), alpha=alpha, text_emb=emb, text_mask=mask,
                         steps=steps, generator=gen())
    torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)


def test_higher_alpha_keeps_less_of_the_input():
    c0 = 2.0 * latent(b=1) + 1.0  # far from the base model's N(0, 1)
    emb, mask = text(1)

    def run(alpha):
        return degrade_latent(c0, GaussianBase(), alpha=alpha, text_emb=emb, text_mask=mask, steps=50,
                              generator=gen())

    errors = [(run(a) - c0).pow(2).mean().item() for a in (0.1, 0.35, 0.9)]
    assert errors[0] < errors[1] < errors[2]
    corr = torch.corrcoef(torch.stack([run(0.35).flatten(), c0.flatten()]))[0, 1]
    assert corr > 0.9  # structure survives the paper's alpha


def test_same_generator_seed_same_output():
    base, (emb, mask), c0 = GaussianBase(), text(), latent()
    kwargs = dict(alpha=0.35, text_emb=emb, text_mask=mask, steps=20)
    a = degrade_latent(c0, base, generator=gen(3), **kwargs)
    b = degrade_latent(c0, base, generator=gen(3), **kwargs)
    c = degrade_latent(c0, base, generator=gen(4), **kwargs)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.shape == c0.shape and a.dtype == c0.dtype


def test_runs_the_part_of_the_schedule_below_alpha():
    emb, mask = text()
    base = RecordingBase(latent(seed=1))
    degrade_latent(latent(), base, alpha=0.35, text_emb=emb, text_mask=mask, steps=50, generator=gen())
    ts = [t[0].item() for t, _, _ in base.calls]
    assert len(ts) == math.ceil(0.35 * 50) == sdedit_steps(0.35, 50)
    assert ts[0] == pytest.approx(0.35) and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] > 0
    assert ts[0] - ts[1] == pytest.approx(0.35 / len(ts))
    for _, e, m in base.calls:  # the caption reaches the model unchanged
        torch.testing.assert_close(e, emb)
        assert torch.equal(m, mask)


def test_shifted_schedule_step_count():
    assert sdedit_steps(0.35, 50, shift=1.0) == 18
    u = 0.35 / (3.0 - 2.0 * 0.35)  # unshifted time of t = 0.35 under shift 3
    assert sdedit_steps(0.35, 50, shift=3.0) == math.ceil(u * 50)
    assert sdedit_steps(0.01, 10) == 1


class TextBase(BaseT2V):
    """Velocity that is the mean of the text embedding, broadcast: makes guidance easy to check."""

    latent_channels, text_dim = C, D

    def velocity(self, x_t, t, text_emb, text_mask):
        return text_emb.mean((1, 2)).view(-1, 1, 1, 1, 1).expand_as(x_t)


def test_guidance_combines_text_and_null_velocities():
    x, t = latent(), torch.full((2,), 0.3)
    emb = torch.full((2, L, D), 2.0)
    null = torch.zeros(1, L, D)
    mask = torch.ones(2, L, dtype=torch.bool)
    guided = GuidedBase(TextBase(), null, torch.ones(1, L, dtype=torch.bool), scale=5.0)
    v = guided.velocity(x, t, emb, mask)
    torch.testing.assert_close(v, torch.full_like(x, 10.0))  # 0 + 5 * (2 - 0)
    plain = GuidedBase(TextBase(), null, torch.ones(1, L, dtype=torch.bool), scale=1.0)
    torch.testing.assert_close(plain.velocity(x, t, emb, mask), TextBase().velocity(x, t, emb, mask))


def test_batch_helper_draws_alpha_per_micro_batch_and_keeps_captions_aligned():
    c0 = latent(b=5)
    emb, mask = text(5)
    base = RecordingBase(torch.zeros(1, C, 3, 6, 8))
    out, alphas = degrade_latents(c0, base, alpha_range=(0.3, 0.4), text_emb=emb, text_mask=mask, steps=20,
                                  generator=gen(), batch_size=2)
    assert out.shape == c0.shape and alphas.shape == (5,)
    assert ((alphas >= 0.3) & (alphas <= 0.4)).all()
    assert alphas[0] == alphas[1] and alphas[2] == alphas[3] and len(set(alphas.tolist())) == 3
    torch.testing.assert_close(base.calls[0][1], emb[:2])
    torch.testing.assert_close(base.calls[-1][1], emb[4:])
    again, alphas2 = degrade_latents(c0, base, alpha_range=(0.3, 0.4), text_emb=emb, text_mask=mask,
                                     steps=20, generator=gen(), batch_size=2)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    assert torch.equal(alphas, alphas2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(c0=torch.zeros(2, C, 6, 8)), "c0 must be a float tensor"),
    (dict(c0=torch.zeros(2, C, 3, 6, 8, dtype=torch.long)), "c0 must be a float tensor"),
    (dict(c0=torch.full((2, C, 3, 6, 8), float("nan"))), "NaN"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(steps=0), "steps"),
    (dict(text_emb=torch.zeros(3, L, D)), "text_emb"),
])
def test_bad_input_raises_input_error(kwargs, message):
    emb, mask = text()
    args = dict(c0=latent(), alpha=0.35, text_emb=emb, text_mask=mask, steps=10)
    args.update(kwargs)
    c0 = args.pop("c0")
    with pytest.raises(InputError, match=message):
        degrade_latent(c0, GaussianBase(), generator=gen(), **args)


def test_batch_helper_rejects_bad_alpha_range():
    emb, mask = text()
    with pytest.raises(InputError, match="alpha_range"):
        degrade_latents(latent(), GaussianBase(), alpha_range=(0.5, 0.2), text_emb=emb, text_mask=mask,
                        steps=10, generator=gen())
