"""Model-guided degradation (paper §3.3.2): SDEdit of an LR latent with the base T2V model.

The LR latent `c0` (HR video downsampled to ~512p, encoded by the 3D VAE) is blended with Gaussian
noise at ratio alpha, `x = (1 - alpha) c0 + alpha eps` (the rectified-flow point at t = alpha), and
denoised back to t = 0 with the base model's velocity. The result `c0_hat` keeps the layout of the
video while carrying the base model's own artefacts; the paper draws alpha in [0.3, 0.4].

`steps` is the length of the base model's full sampling schedule over t in [1, 0]; SDEdit runs the
part of it below alpha, so the step size matches the base model's sampler (50 steps and
alpha = 0.35 run 18 steps). The Euler chain itself is `gvr.models.base.sdedit`.
"""

from __future__ import annotations

import math

import torch

from gvr.errors import InputError
from gvr.models.base import BaseT2V, sdedit


class GuidedBase(BaseT2V):
    """Classifier-free guidance around a base model: `v_null + scale * (v_text - v_null)`."""

    def __init__(self, base: BaseT2V, null_emb: torch.Tensor, null_mask: torch.Tensor, scale: float):
        super().__init__()
        self.base, self.scale = base, float(scale)
        self.latent_channels, self.text_dim = base.latent_channels, base.text_dim
        self.null_emb, self.null_mask = null_emb, null_mask  # (1 or B, L, D), (1 or B, L)

    def velocity(self, x_t, t, text_emb, text_mask):
        b = x_t.shape[0]
        null_emb = self.null_emb.expand(b, *self.null_emb.shape[1:]).to(text_emb)
        null_mask = self.null_mask.expand(b, *self.null_mask.shape[1:]).to(text_mask)
        v_text = self.base.velocity(x_t, t, text_emb, text_mask)
        v_null = self.base.velocity(x_t, t, null_emb, null_mask)
        return v_null + self.scale * (v_text - v_null)


def sdedit_steps(alpha: float, steps: int, shift: float = 1.0) -> int:
    """Euler steps that a `steps`-long (shifted) schedule over [1, 0] spends below t = alpha."""
    u_alpha = alpha / (shift - (shift - 1) * alpha)  # unshifted time whose shifted value is alpha
    return max(1, math.ceil(u_alpha * steps - 1e-9))


def degrade_latent(c0: torch.Tensor, base: BaseT2V, *, alpha: float, text_emb: torch.Tensor,
                   text_mask: torch.Tensor, steps: int, generator: torch.Generator | None,
                   shift: float = 1.0) -> torch.Tensor:
    """Model-guided LR latent `c0_hat` of `c0` (SDEdit at noise ratio `alpha`).

    Args:
        c0: clean LR latent `(B, C, T, H, W)`.
        base: the base T2V model (rectified-flow velocity `eps - x0`); wrap it in `GuidedBase`
            for classifier-free guidance.
        alpha: noise ratio in (0, 1]; the paper uses 0.3..0.4.
        text_emb, text_mask: the caption's embedding `(B, L, D)` and mask `(B, L)`.
        steps: length of the base model's full sampling schedule; the part below alpha is run.
        generator: source of the noise; the same seed gives the same result.
        shift: the base sampler's timestep shift (1 = uniform in t).

    Returns:
        `c0_hat`, shaped and typed like `c0`.
    """
    _check(c0, text_emb, text_mask)
    if not 0 < alpha <= 1:
        raise InputError(f"model-guided degradation: alpha must be in (0, 1], got {alpha}")
    if steps < 1:
        raise InputError(f"model-guided degradation: steps must be >= 1, got {steps}")
    n = sdedit_steps(alpha, steps, shift)
    return sdedit(base, c0, alpha, n, text_emb, text_mask, generator=generator, shift=shift)


def degrade_latents(c0: torch.Tensor, base: BaseT2V, *, alpha_range: tuple[float, float] = (0.3, 0.4),
                    text_emb: torch.Tensor, text_mask: torch.Tensor, steps: int,
                    generator: torch.Generator | None, batch_size: int = 1,
                    shift: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-guided degradation of many latents in micro-batches, alpha drawn per micro-batch.

    Args:
        c0: clean LR latents `(N, C, T, H, W)`.
        alpha_range: `[low, high]` of the uniform noise ratio.
        text_emb, text_mask: `(N, L, D)` and `(N, L)`, one caption per latent.
        batch_size: latents per base-model call; 1 gives every latent its own alpha.
        Others as in `degrade_latent`.

    Returns:
        `(c0_hat (N, C, T, H, W), alpha (N,))`.
    """
    _check(c0, text_emb, text_mask)
    lo, hi = alpha_range
    if not 0 < lo <= hi <= 1:
        raise InputError(f"model-guided degradation: alpha_range must satisfy 0 < low <= high <= 1, got {alpha_range}")
    if batch_size < 1:
        raise InputError(f"model-guided degradation: batch_size must be >= 1, got {batch_size}")
    outs, alphas = [], []
    for start in range(0, c0.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        u = torch.rand((), generator=generator, device=generator.device if generator is not None else "cpu")
        alpha = lo + (hi - lo) * float(u)
        outs.append(degrade_latent(c0[sl], base, alpha=alpha, text_emb=text_emb[sl], text_mask=text_mask[sl],
                                   steps=steps, generator=generator, shift=shift))
        alphas += [alpha] * outs[-1].shape[0]
    return torch.cat(outs), torch.tensor(alphas, dtype=torch.float64)


def _check(c0: torch.Tensor, text_emb: torch.Tensor, text_mask: torch.Tensor) -> None:
    """One clear InputError for latents or text that cannot go through the base model."""
    if not isinstance(c0, torch.Tensor) or c0.ndim != 5 or not c0.is_floating_point():
        shape = tuple(c0.shape) if isinstance(c0, torch.Tensor) else type(c0).__name__
        raise InputError(f"model-guided degradation: c0 must be a float tensor (B, C, T, H, W), got {shape}")
    if c0.shape[0] == 0:
        raise InputError("model-guided degradation: c0 holds no latents")
    if text_emb.ndim != 3 or text_emb.shape[0] != c0.shape[0] or tuple(text_mask.shape) != tuple(text_emb.shape[:2]):
        raise InputError(f"model-guided degradation: text_emb (B, L, D) and text_mask (B, L) must match "
                         f"B={c0.shape[0]}; got {tuple(text_emb.shape)} and {tuple(text_mask.shape)}")
    if not torch.isfinite(c0).all():
        raise InputError("model-guided degradation: c0 contains NaN or Inf values")
