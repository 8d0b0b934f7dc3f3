"""Rectified flow for SimpleGVR (paper §2, §3.4): noising, the training loss, the Euler sampler.

Path `z_t = (1 - t) z0 + t eps` (t = 1 is pure noise), velocity target `eps - z0`, MSE loss. The LR
latent gets its own, independent noise at a level t_c ~ U[0.3, 0.6] in training ("noise augmentation")
and a fixed, chosen t_c at inference; 10% of prompts are replaced by the null prompt in training, which
makes classifier-free guidance available at inference. The sampler is a plain Euler loop over the
uniform schedule 1 -> 0 (`gvr.diffusion.timesteps.inference_schedule`); the model only predicts velocity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gvr.diffusion.timesteps import inference_schedule


def add_noise(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """(1 - t) * z0 + t * noise, t a float or (B,) broadcast per sample."""
    t = _per_sample(t, z0)
    return (1 - t) * z0 + t * noise


def velocity_target(z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d z_t / d t along the straight path: noise - z0."""
    return noise - z0


def predict_x0(z_t: torch.Tensor, t: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by a velocity: z_t - t * v."""
    return z_t - _per_sample(t, z_t) * v


def _per_sample(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))
    return t


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (so a seed gives the same noise on any device)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws on the generator's device, moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def _match_length(emb: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (zeros, mask False) or cut a text embedding to `length` tokens."""
    if emb.shape[1] >= length:
        return emb[:, :length], mask[:, :length]
    pad = length - emb.shape[1]
    return F.pad(emb, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)


def drop_prompts(text: torch.Tensor, text_mask: torch.Tensor | None, null_text: torch.Tensor,
                 null_mask: torch.Tensor | None, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the prompts of samples where `drop` (B,) is True by the null prompt."""
    b, length = text.shape[:2]
    text_mask = text_mask if text_mask is not None else torch.ones(text.shape[:2], dtype=torch.bool,
                                                                   device=text.device)
    null_mask = null_mask if null_mask is not None else torch.ones(null_text.shape[:2], dtype=torch.bool,
                                                                   device=text.device)
    null_text, null_mask = _match_length(null_text.to(text), null_mask.to(text.device).bool(), length)
    null_text, null_mask = null_text.expand(b, -1, -1), null_mask.expand(b, -1)
    text = torch.where(drop[:, None, None], null_text, text)
    return text, torch.where(drop[:, None], null_mask, text_mask.bool())


def training_loss(model: Callable[..., torch.Tensor], z0: torch.Tensor, c0: torch.Tensor, text: torch.Tensor,
                  text_mask: torch.Tensor | None, *, null_text: torch.Tensor, null_mask: torch.Tensor | None,
                  t_sampler, noise_aug: tuple[float, float] = (0.3, 0.6), null_prompt_prob: float = 0.1,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conditional flow-matching loss for one batch (paper Eq. 3).

    Args:
        model: a SimpleGVR (or a wrapper such as a DeepSpeed engine) called as
            `model(z_t, t, c_t, t_c, text, text_mask)`.
        z0: (B, C, T, H, W) clean HR latents; c0: (B, C, T, h, w) clean LR latents.
        text, text_mask: (B, L, Dt) embeddings and (B, L) bool mask (None: all valid).
        null_text, null_mask: the null prompt's embedding (1 or B, L', Dt) and mask.
        t_sampler: draws t, e.g. `UniformSampler()` or `DetailAwareSampler.load(path)`.
        noise_aug: range of the LR noise level t_c, drawn uniformly per sample.
        null_prompt_prob: chance that a sample's prompt is replaced by the null prompt.
        generator: source of every random draw (t, both noises, t_c, prompt drops).
    Returns:
        The scalar loss and detached stats: loss, mean t, mean t_c, fraction of null prompts.
    """
    b, device = z0.shape[0], z0.device
    # 1. HR path: z_t = (1 - t) z0 + t eps
    t = t_sampler.sample(b, generator, device)
    noise = randn(tuple(z0.shape), generator, device, z0.dtype)
    z_t = add_noise(z0, noise, t)
    # 2. LR noise augmentation with its own noise
    lo, hi = noise_aug
    t_c = lo + (hi - lo) * rand(b, generator, device)
    c_t = add_noise(c0, randn(tuple(c0.shape), generator, device, c0.dtype), t_c)
    # 3. null prompts
    drop = rand(b, generator, device) < null_prompt_prob
    text, text_mask = drop_prompts(text, text_mask, null_text, null_mask, drop)
    # 4. velocity regression
    v = model(z_t, t, c_t, t_c, text, text_mask)
    loss = F.mse_loss(v.float(), velocity_target(z0, noise).float())
    stats = {"loss": loss.detach(), "t": t.mean().detach(), "t_c": t_c.mean().detach(),
             "null_prompt": drop.float().mean()}
    return loss, stats


StepCallback = Callable[[int, float, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def euler_sample(model: Callable[..., torch.Tensor], c0: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor | None, *, steps: int, noise_aug: float, guidance: float = 1.0,
                 null_text: torch.Tensor | None = None, null_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, hr_shape: tuple[int, ...],
                 on_step: StepCallback | None = None) -> torch.Tensor:
    """Integrate dz = v dt from pure noise (t = 1) to t = 0 with `steps` uniform Euler steps.

    Args:
        model: the velocity model, called as `model(z_t, t, c_t, t_c, text, text_mask)`.
        c0: (B, C, T, h, w) clean LR latent; noised once at level `noise_aug` and kept fixed.
        text, text_mask: prompt embeddings (B, L, Dt) and mask (B, L).
        steps: number of Euler steps (uniform: 1000, 980, ..., 0 for 50).
        noise_aug: LR noise level t_c at inference (fidelity vs. freedom to correct, App. A.7).
        guidance: classifier-free guidance scale; 1 is off (one forward per step).
        null_text, null_mask: the null prompt, needed when guidance != 1.
        generator: source of the initial HR noise and the LR noise.
        hr_shape: (B, C, T, H, W) of the HR latent.
        on_step: called as `on_step(i, t, z_t, v)` before each update (e.g. to track predicted x0).
    Returns:
        The HR latent z0 (B, C, T, H, W), float32.
    """
    device = c0.device
    b = hr_shape[0]
    z = randn(tuple(hr_shape), generator, device)
    t_c = torch.full((b,), float(noise_aug), device=device)
    c_t = add_noise(c0.float(), randn(tuple(c0.shape), generator, device), t_c)
    guided = guidance != 1.0
    if guided:
        if null_text is None:
            raise ValueError("guidance != 1 needs null_text")
        un_text, un_mask = drop_prompts(text, text_mask, null_text, null_mask,
                                        torch.ones(b, dtype=torch.bool, device=device))
        text_in = torch.cat([text, un_text])
        mask_in = torch.cat([text_mask if text_mask is not None else torch.ones_like(un_mask), un_mask])
    schedule = inference_schedule(steps)
    for i, (t, t_next) in enumerate(zip(schedule[:-1], schedule[1:])):
        tt = torch.full((b,), t, device=device)
        if guided:  # conditional and unconditional in one batch
            v_c, v_u = model(z.repeat(2, 1, 1, 1, 1), tt.repeat(2), c_t.repeat(2, 1, 1, 1, 1),
                             t_c.repeat(2), text_in, mask_in).float().chunk(2)
            v = v_u + guidance * (v_c - v_u)
        else:
            v = model(z, tt, c_t, t_c, text, text_mask).float()
        if on_step is not None:
            on_step(i, t, z, v)
        z = z + (t_next - t) * v
    return z
