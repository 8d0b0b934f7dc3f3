"""SimpleGVR: the latent-cascaded video super-resolution DiT (paper §2, §3.1-3.2, Fig. 2-3).

The noisy HR latent z_t and the noisy LR latent c_t (brought to z_t's size by the latent upsampler)
are concatenated on channels and patchified (1, 2, 2). Each block has a per-frame 2D spatial
self-attention, a 3D spatiotemporal self-attention (full, interleaving temporal units, Swin window or
sparse local, chosen per block), a text cross-attention over T5 embeddings and an FFN. Timestep and
LR noise level are embedded together and modulate the blocks adaLN-style (one shared projection plus a
learned per-block offset, as in Wan); q/k carry 3D RoPE. The model predicts the rectified-flow velocity
`noise - z0` (see `gvr.diffusion.flow_matching`); the sampler lives outside it.

The block layout is Wan2.1's transformer block plus the 2D attention, so Wan's weights load with the
new parts silent (`gvr.models.wan_import` maps the names): the 2D attention's modulation rows are zero
there, so its gate is 0 and an imported model starts out as the base T2V model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from gvr.errors import ConfigError, InputError
from gvr.models.attention import attention as attention_3d
from gvr.models.presets import DiTConfig
from gvr.models.rope import Rope, rope_table, rotate
from gvr.models.upsampler import build_upsampler

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TIME_SCALE = 1000.0  # t in [0, 1] is embedded as t * 1000, the diffusion-step convention Wan was trained on

Grid = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# Functional pieces: RoPE, patchify, modulation, attention patterns
# --------------------------------------------------------------------------------------------


def patchify(x: torch.Tensor, patch: Grid) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, L, C*pt*ph*pw) tokens in (t, h, w) raster order."""
    pt, ph, pw = patch
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)


def unpatchify(x: torch.Tensor, grid: Grid, patch: Grid) -> torch.Tensor:
    """(B, L, pt*ph*pw*C) -> (B, C, T, H, W); channels last within a patch, as Wan's output head."""
    (t, h, w), (pt, ph, pw) = grid, patch
    return rearrange(x, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w,
                     pt=pt, ph=ph, pw=pw)


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of t * 1000, (B,) -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * TIME_SCALE * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


@dataclass
class Modulation:
    """adaLN shift / scale / gate for one sub-layer, each (B, 1, D) float32."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Grid,
                      rope: Rope | None = None) -> torch.Tensor:
    """Full attention within each latent frame: frames folded into the batch, (B, n, T*S, d) in and out;
    q and k rotated by `rope` first."""
    q, k = rotate(q, k, rope)
    q, k, v = (rearrange(a, "b n (t s) d -> (b t) n s d", t=grid[0]) for a in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v)
    return rearrange(o, "(b t) n s d -> b n (t s) d", t=grid[0])


def rotated_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
    """Full attention with q and k rotated by `rope` first."""
    return F.scaled_dot_product_attention(*rotate(q, k, rope), v)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' and input's dtype; returns float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class FP32RMSNorm(nn.RMSNorm):
    """RMSNorm computed in float32 (bf16 input with float32 weights under autocast), input's dtype out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        return F.rms_norm(x.float(), self.normalized_shape, w, self.eps).type_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention, q/k RMS-normed across heads, RoPE; `attend` is the pattern."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm_q = FP32RMSNorm(dim, eps=eps)
        self.norm_k = FP32RMSNorm(dim, eps=eps)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Rope, attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (rearrange(a, "b l (n d) -> b n l d", n=self.heads) for a in (q, k, v))
        o = attend(q, k, v, rope=rope)  # (B, n, L, d); attend rotates q and k, fused with its own pass where it can
        return self.out(rearrange(o, "b n l d -> b l (n d)"))


class CrossAttention(nn.Module):
    """Text cross-attention; keys outside `mask` (B, L_text) are ignored."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.norm_q = FP32RMSNorm(dim, eps=eps)
        self.norm_k = FP32RMSNorm(dim, eps=eps)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        k, v = self.kv(text).chunk(2, dim=-1)
        q, k = self.norm_q(self.q(x)), self.norm_k(k)
        q, k, v = (rearrange(a, "b l (n d) -> b n l d", n=self.heads) for a in (q, k, v))
        attn_mask = mask[:, None, None, :] if mask is not None else None  # (B, 1, 1, L_text)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(rearrange(o, "b n l d -> b l (n d)"))


class MLP(nn.Module):
    """Linear, tanh-GELU, linear: the block FFN, and the T5 -> model-width text embedder (as in Wan)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepMLP(nn.Module):
    """Sinusoidal features of a level in [0, 1] -> (B, D)."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = timestep_features(t, self.freq_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(x)))


@dataclass
class BlockInputs:
    """What every block sees besides the token stream."""

    grid: Grid
    rope: Rope
    mod: torch.Tensor  # (B, n_mod, D) shared time projection
    text: torch.Tensor  # (B, L_text, D)
    text_mask: torch.Tensor | None  # (B, L_text) bool


def _gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + gate * y with the sum in float32 (the residual stream may be bf16)."""
    return (x.float() + y.float() * gate).type_as(x)


class GVRBlock(nn.Module):
    """2D spatial attention, 3D spatiotemporal attention, text cross-attention and FFN."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        n_mod = 9 if cfg.spatial_attention else 6
        # Per-block offsets of [3D attn (shift, scale, gate), FFN (...), 2D attn (...)] to the shared
        # time projection; zero so that a fresh block starts as the identity (adaLN-Zero).
        self.modulation = nn.Parameter(torch.zeros(1, n_mod, d))
        self.norm = FP32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.attn2d = SelfAttention(d, cfg.heads, cfg.eps) if cfg.spatial_attention else None
        self.attn3d = SelfAttention(d, cfg.heads, cfg.eps)
        self.cross_norm = FP32LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross = CrossAttention(d, cfg.heads, cfg.eps)
        self.ffn = MLP(d, cfg.ffn_dim, d)
        self.attn_kind, self.attn_opts = "full", {}

    def _norm_mod(self, x: torch.Tensor, m: Modulation) -> torch.Tensor:
        return modulate(self.norm(x), m.shift, m.scale).type_as(x)

    def _attend3d(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Grid, rope: Rope) -> torch.Tensor:
        return attention_3d(q, k, v, grid, self.attn_kind, rope=rope, **self.attn_opts)

    def forward(self, x: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        rows = (self.modulation + inp.mod.float()).chunk(self.modulation.shape[1], dim=1)  # (B, 1, D) each
        a3, ff = Modulation(*rows[0:3]), Modulation(*rows[3:6])
        # 1. per-frame 2D spatial self-attention
        if self.attn2d is not None:
            a2 = Modulation(*rows[6:9])
            y = self.attn2d(self._norm_mod(x, a2), inp.rope, partial(spatial_attention, grid=inp.grid))
            x = _gated(x, y, a2.gate)
        # 2. 3D spatiotemporal self-attention (pattern chosen per block)
        y = self.attn3d(self._norm_mod(x, a3), inp.rope, partial(self._attend3d, grid=inp.grid))
        x = _gated(x, y, a3.gate)
        # 3. text cross-attention
        x = x + self.cross(self.cross_norm(x).type_as(x), inp.text, inp.text_mask)
        # 4. feed-forward
        return _gated(x, self.ffn(self._norm_mod(x, ff)), ff.gate)


class TokenConcat(nn.Module):
    """Ablation (Fig. 2c, Eq. 5): LR tokens join one self-attention with the HR tokens, then are dropped."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.embed = nn.Linear(cfg.latent_channels * math.prod(cfg.patch), cfg.dim)
        self.norm = FP32LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.eps)
        self.cfg = cfg

    def forward(self, x: torch.Tensor, c_t: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        p = self.cfg.patch
        lr_grid = (c_t.shape[2] // p[0], c_t.shape[3] // p[1], c_t.shape[4] // p[2])
        # LR tokens sit at HR coordinates so RoPE relates each to the HR tokens it covers.
        scale = (1.0, inp.grid[1] / lr_grid[1], inp.grid[2] / lr_grid[2])
        lr_rope = rope_table(lr_grid, self.cfg.head_dim, self.cfg.rope_theta, x.device, scale)
        rope = tuple(torch.cat([a, b]) for a, b in zip(inp.rope, lr_rope))
        c = self.embed(patchify(c_t.to(x.dtype), p))  # (B, L_lr, D)
        xc = torch.cat([x, c], dim=1)  # (B, L + L_lr, D)
        y = self.attn(self.norm(xc).type_as(xc), rope, rotated_sdpa)
        return x + y[:, : x.shape[1]]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class SimpleGVR(nn.Module):
    """SimpleGVR velocity model: `forward(z_t, t, c_t, t_c, text, text_mask) -> v` (shape of z_t)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        c, d, pv = cfg.latent_channels, cfg.dim, math.prod(cfg.patch)
        self.n_mod = 9 if cfg.spatial_attention else 6
        self.upsampler = build_upsampler(cfg.upsampler, c, cfg.upsampler_channels, cfg.temporal_factor)
        concat = self.upsampler is not None
        self.patch_embed = nn.Linear((2 * c if concat else c) * pv, d)  # [z_t, upsampled c_t] patches
        self.token_concat = None if concat else TokenConcat(cfg)
        self.time_embed = TimestepMLP(cfg.freq_dim, d)
        self.noise_level_embed = TimestepMLP(cfg.freq_dim, d)  # LR noise-augmentation level t_c
        self.time_proj = nn.Linear(d, self.n_mod * d)
        self.text_embed = MLP(cfg.text_dim, d, d)
        self.blocks = nn.ModuleList(GVRBlock(cfg) for _ in range(cfg.depth))
        self.head_norm = FP32LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.zeros(1, 2, d))
        self.head = nn.Linear(d, pv * c)
        if not self.head.weight.is_meta:  # meta-built models get their values assigned later
            self.reset_parameters()
        self.set_attention(cfg.attention)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier linears with zero bias, PyTorch defaults elsewhere; zero what must start silent.

        Safe to call on storage made by `to_empty` (meta-built models): it sets every parameter.

        Zero: the shared time projection (with the zero per-block offsets every gate starts at 0, so
        the gated sub-layers start silent, adaLN-Zero; the text cross-attention is ungated, as in Wan), the output head (the first prediction is 0), the
        LR noise-level embedding's last layer (t_c starts without effect) and the token-concatenation
        attention's output (the LR tokens start without effect).
        """
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):  # convs, norms: their defaults
                m.reset_parameters()
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for table in (self.head_modulation, *(b.modulation for b in self.blocks)):
            nn.init.zeros_(table)
        for m in (self.time_embed.fc1, self.time_embed.fc2, self.noise_level_embed.fc1):
            nn.init.normal_(m.weight, std=0.02)
        for m in (self.time_proj, self.head, self.noise_level_embed.fc2):
            nn.init.zeros_(m.weight)
        if self.token_concat is not None:
            nn.init.zeros_(self.token_concat.attn.out.weight)

    # ---- run-time switches -------------------------------------------------------------------

    def set_attention(self, kind: str | Sequence[str], *, unit: int | None = None,
                      window: Sequence[int] | None = None, sparse_window: Sequence[int] | None = None,
                      topk: int | None = None) -> None:
        """Switch the 3D attention of every block (one kind, or one per block) and its options.

        temporal_unit and window shift their partition on odd blocks (paper §3.4: l_2k plain,
        l_2k+1 shifted by half a unit). The new choice is recorded in `cfg` and hence in checkpoints.
        """
        kinds = (kind,) * self.cfg.depth if isinstance(kind, str) else tuple(kind)
        changes = {"attention": kinds}
        for name, value in (("attention_unit", unit), ("attention_window", window),
                            ("sparse_window", sparse_window), ("sparse_topk", topk)):
            if value is not None:
                changes[name] = tuple(value) if isinstance(value, Sequence) else value
        self.cfg = dataclasses.replace(self.cfg, **changes)  # validates kinds and length
        for i, (block, k) in enumerate(zip(self.blocks, kinds)):
            block.attn_kind, block.attn_opts = k, self._attention_options(k, i)

    def _attention_options(self, kind: str, index: int) -> dict:
        cfg, shift = self.cfg, index % 2 == 1
        if kind == "temporal_unit":
            return {"unit": cfg.attention_unit, "shift": shift}
        if kind == "window":
            return {"window": cfg.attention_window, "shift": shift}
        if kind == "sparse_local":
            return {"window": cfg.sparse_window, "topk": cfg.sparse_topk}
        return {}

    def set_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing per block (and of the upsampler) while gradients are on."""
        self.cfg = dataclasses.replace(self.cfg, checkpointing=enabled)

    # ---- forward -------------------------------------------------------------------------------

    def _check(self, z_t, t, c_t, t_c, text) -> None:
        cfg, p = self.cfg, self.cfg.patch
        if z_t.ndim != 5 or z_t.shape[1] != cfg.latent_channels:
            raise InputError(f"z_t: expected (B, {cfg.latent_channels}, T, H, W), got {tuple(z_t.shape)}")
        if c_t.ndim != 5 or c_t.shape[:3] != z_t.shape[:3]:
            raise InputError(f"c_t: expected (B, C, T, h, w) with z_t's B, C, T {tuple(z_t.shape[:3])}, "
                             f"got {tuple(c_t.shape)}")
        sizes = z_t.shape[2:] if self.token_concat is None else (*z_t.shape[2:], *c_t.shape[3:])
        if any(n % q for n, q in zip(sizes, (*p, *p[1:]))):
            raise InputError(f"latent sizes {tuple(sizes)} must be multiples of the patch {p}")
        b = z_t.shape[0]
        for name, v in (("t", t), ("t_c", t_c)):
            if v.shape != (b,):
                raise InputError(f"{name}: expected shape ({b},), got {tuple(v.shape)}")
        if text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim:
            raise InputError(f"text: expected ({b}, L, {cfg.text_dim}), got {tuple(text.shape)}")

    def _maybe_checkpoint(self, fn, *args):
        if self.cfg.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, c_t: torch.Tensor, t_c: torch.Tensor,
                text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for the noisy HR latent.

        Args:
            z_t: (B, C, T, H, W) noisy HR latent.
            t: (B,) diffusion time in [0, 1] (1 = pure noise).
            c_t: (B, C, T, h, w) noisy LR latent at its own size; the upsampler brings it to (H, W).
            t_c: (B,) noise-augmentation level of c_t in [0, 1].
            text: (B, L, text_dim) text embeddings (T5).
            text_mask: (B, L) bool, True for real tokens; a row with none attends to every token.
        Returns:
            (B, C, T, H, W) velocity `noise - z0`.
        """
        self._check(z_t, t, c_t, t_c, text)
        cfg, dtype = self.cfg, self.patch_embed.weight.dtype
        _, _, T, H, W = z_t.shape
        grid = (T // cfg.patch[0], H // cfg.patch[1], W // cfg.patch[2])
        # 1. LR condition at HR size, concatenated on channels, patchified
        x = z_t.to(dtype)
        if self.upsampler is not None:
            c = self._maybe_checkpoint(self.upsampler, c_t.to(dtype), (H, W))  # (B, C, T, H, W)
            x = torch.cat([x, c.to(dtype)], dim=1)  # (B, 2C, T, H, W)
        x = self.patch_embed(patchify(x, cfg.patch))  # (B, L, D)
        # 2. timestep + LR noise level, text
        temb = self.time_embed(t) + self.noise_level_embed(t_c)  # (B, D)
        mod = self.time_proj(F.silu(temb)).unflatten(1, (self.n_mod, cfg.dim))  # (B, n_mod, D)
        if text_mask is not None:
            text_mask = text_mask.bool() | ~text_mask.bool().any(dim=1, keepdim=True)
        inp = BlockInputs(grid, rope_table(grid, cfg.head_dim, cfg.rope_theta, x.device), mod,
                          self.text_embed(text.to(dtype)), text_mask)
        # 3. token-concatenation ablation: HR and LR tokens attend jointly once
        if self.token_concat is not None:
            x = self.token_concat(x, c_t, inp)
        # 4. blocks
        for block in self.blocks:
            x = self._maybe_checkpoint(block, x, inp)
        # 5. modulated head, back to latent layout
        shift, scale = (self.head_modulation + temb[:, None].float()).chunk(2, dim=1)  # (B, 1, D) each
        x = self.head(modulate(self.head_norm(x), shift, scale).type_as(x))  # (B, L, pv*C)
        return unpatchify(x, grid, cfg.patch)

    # ---- artifacts -----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write `model.safetensors` and `config.json` ({"model": DiTConfig, **extra}) into `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = {"model": self.cfg.to_dict(), **(extra or {})}
        _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        _atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(config, indent=2)))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> SimpleGVR:
        """Rebuild from a `save_pretrained` directory alone (built on meta, weights assigned)."""
        directory = Path(directory)
        cfg = DiTConfig.from_dict(read_config(directory)["model"])
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise InputError(f"{weights}: model weights not found")
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights), device=str(device))
        except Exception as e:  # a truncated or foreign file
            raise InputError(f"{weights}: unreadable safetensors file ({e})") from None
        with torch.device("meta"):
            model = cls(cfg)
        load_state(model, state, str(weights), dtype=dtype)
        return model


def read_config(directory: str | Path) -> dict:
    """config.json of a SimpleGVR artifact, with one clear error when missing or malformed."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise InputError(f"{path}: not found; is {directory} a SimpleGVR model directory?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise InputError(f"{path}: has no \"model\" section")
    try:
        DiTConfig.from_dict(config["model"])
    except (TypeError, ConfigError) as e:
        raise InputError(f"{path}: invalid model section ({e})") from None
    return config


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str,
               dtype: torch.dtype | None = None) -> None:
    """Assign `state` to a (meta-built) model; missing, unexpected or mis-shaped weights -> InputError."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} mis-shaped (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)} vs "
                 f"{tuple(expected[wrong[0]].shape)})" if wrong else ""]
        raise InputError(f"{source}: weights do not match the model config: {'; '.join(p for p in parts if p)}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, assign=True)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)

