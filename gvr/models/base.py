"""The base T2V model behind a rectified-flow velocity interface, and SDEdit (model-guided degradation).

Convention (the same as `gvr.diffusion.flow_matching`): `x_t = (1 - t) x0 + t eps` with t in [0, 1]
(t = 1 is pure noise) and the model predicts `v = eps - x0`, so an Euler step is
`x <- x + (t_next - t) v`.

Wan adapter: diffusers' `WanTransformer3DModel` is trained with flow matching on the same
interpolation and predicts the same `eps - x0` ("flow prediction"); its timestep input is
`1000 t` (the scheduler's `num_train_timesteps` times sigma). No sign or scale change is needed
beyond that. It takes no text mask: Wan's pipelines zero the embeddings of padded tokens instead,
so the adapter multiplies `text_emb` by `text_mask` before the call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gvr.errors import InputError
from gvr.models.vae import import_optional, pretrained_location, resolve_device, resolve_dtype

BASE_KINDS = ("wan",)


class BaseT2V(nn.Module):
    """A text-conditioned latent video model predicting rectified-flow velocity `eps - x0`."""

    latent_channels: int
    text_dim: int

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor,
                 text_mask: torch.Tensor) -> torch.Tensor:
        """x_t (B, C, T, H, W), t (B,) in [0, 1], text (B, L, D) and mask (B, L) -> v like x_t."""
        raise NotImplementedError

    def check_inputs(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor,
                     text_mask: torch.Tensor) -> None:
        """One clear InputError for inputs the model cannot take."""
        c, d = self.latent_channels, self.text_dim
        if x_t.ndim != 5 or x_t.shape[1] != c:
            raise InputError(f"base model: x_t must be (B, {c}, T, H, W); got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        if t.shape != (b,):
            raise InputError(f"base model: t must be ({b},); got {tuple(t.shape)}")
        if text_emb.ndim != 3 or text_emb.shape[0] != b or text_emb.shape[2] != d:
            raise InputError(f"base model: text_emb must be ({b}, L, {d}); got {tuple(text_emb.shape)}")
        if text_mask.shape != text_emb.shape[:2]:
            raise InputError(f"base model: text_mask must be {tuple(text_emb.shape[:2])}; got {tuple(text_mask.shape)}")
        if not torch.isfinite(x_t).all():
            raise InputError("base model: x_t contains NaN or Inf values")


class WanBaseT2V(BaseT2V):
    """diffusers `WanTransformer3DModel` (Wan2.1 T2V) as a `BaseT2V`."""

    num_train_timesteps = 1000  # Wan's FlowMatch scheduler: timestep = 1000 * sigma

    def __init__(self, transformer: nn.Module):
        super().__init__()
        cfg = transformer.config
        self.latent_channels, self.text_dim = int(cfg.in_channels), int(cfg.text_dim)
        self.patch = tuple(cfg.patch_size)
        self.transformer = transformer.eval().requires_grad_(False)

    def velocity(self, x_t, t, text_emb, text_mask):
        self.check_inputs(x_t, t, text_emb, text_mask)
        pt, ph, pw = self.patch
        if x_t.shape[2] % pt or x_t.shape[3] % ph or x_t.shape[4] % pw:
            raise InputError(f"base model: latent size {tuple(x_t.shape[2:])} is not divisible by the "
                             f"patch size {self.patch}")
        weight = self.transformer.patch_embedding.weight  # some modules stay float32 in a bf16 model
        dtype, device = weight.dtype, weight.device
        text = (text_emb * text_mask[..., None]).to(device, dtype)  # Wan's pipelines zero-pad, no mask
        v = self.transformer(hidden_states=x_t.to(device, dtype), timestep=(t * self.num_train_timesteps).to(device),
                             encoder_hidden_states=text, return_dict=False)[0]
        return v.to(x_t.device, x_t.dtype)


def load_base_model(kind: str, path: str | Path | None, *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype = torch.float32, allow_download: bool = False,
                    channels: int | None = None, text_dim: int | None = None) -> BaseT2V:
    """Load the base T2V model of `kind` (`wan`).

    Args:
        kind: model family.
        path: local diffusers directory of the transformer, or a `*-Diffusers` pipeline directory
            with a `transformer/` subfolder; a hub id only with `allow_download=True`.
        device, dtype: where and in which precision it runs.
        channels, text_dim: when given, the checkpoint must have these latent channels / text width.
    """
    if kind not in BASE_KINDS:
        raise InputError(f"unknown base model kind {kind!r} (choose from {', '.join(BASE_KINDS)})")
    diffusers = import_optional("diffusers")
    where, sub = pretrained_location(path, f"{kind} base model", allow_download, subfolder="transformer")
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    try:
        transformer = diffusers.WanTransformer3DModel.from_pretrained(
            where, subfolder=sub, torch_dtype=dtype, local_files_only=not allow_download)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        text = str(e).strip().splitlines()
        raise InputError(f"{kind} base model: cannot load from {path}: {text[0] if text else type(e).__name__}") from None
    model = WanBaseT2V(transformer)
    cfg = transformer.config
    if int(cfg.out_channels or cfg.in_channels) != model.latent_channels:
        raise InputError(f"{kind} base model: {path} maps {cfg.in_channels} to {cfg.out_channels} channels; "
                         "a velocity model needs them equal")
    for name, want, have in (("latent channels", channels, model.latent_channels),
                             ("text width", text_dim, model.text_dim)):
        if want is not None and want != have:
            raise InputError(f"{kind} base model: {path} has {have} {name}, expected {want}")
    return model.to(device)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 timestep shift `s t / (1 + (s - 1) t)`: spends more steps at high noise when s > 1."""
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def sdedit(base: BaseT2V, c0: torch.Tensor, alpha: float, steps: int, text_emb: torch.Tensor,
           text_mask: torch.Tensor, generator: torch.Generator | None = None, shift: float = 1.0) -> torch.Tensor:
    """Model-guided degradation (paper §3.3.2): noise `c0` to t = alpha, then Euler-denoise with `base` to t = 0.

    `x_alpha = (1 - alpha) c0 + alpha eps` is the paper's blend of c0 with Gaussian noise at ratio
    alpha (0.3-0.4 there). The `steps` Euler steps run from t = alpha to 0, uniformly spaced
    after the timestep `shift` (1 = uniform in t; Wan samples with 3-5, which the chain can match).
    Noise comes from `generator` (on its own device), so the same seed gives the same result.
    """
    if not 0 < alpha <= 1:
        raise InputError(f"sdedit: alpha must be in (0, 1]; got {alpha}")
    if steps < 1:
        raise InputError(f"sdedit: steps must be >= 1; got {steps}")
    if shift <= 0:
        raise InputError(f"sdedit: shift must be > 0; got {shift}")
    gen_device = generator.device if generator is not None else c0.device
    noise = torch.randn(c0.shape, generator=generator, device=gen_device, dtype=torch.float32).to(c0.device)
    x = (1 - alpha) * c0.float() + alpha * noise
    # uniform in the unshifted time u, from the u whose shifted value is alpha down to 0
    u_alpha = alpha / (shift - (shift - 1) * alpha)
    ts = shift_time(torch.linspace(u_alpha, 0.0, steps + 1, dtype=torch.float64), shift).tolist()
    ts[0] = alpha  # exact start despite rounding
    for t, t_next in zip(ts[:-1], ts[1:]):
        tb = torch.full((c0.shape[0],), t, device=c0.device)
        x = x + (t_next - t) * base.velocity(x, tb, text_emb, text_mask).float()
    return x.to(c0.dtype)

