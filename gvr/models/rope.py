"""3D rotary position embedding (RoPE) of the DiT's queries and keys.

`rope_table` gives the angles' cos and sin for a (t, h, w) token grid; `apply_rope` is the reference
rotation, in float32 through plain torch ops (the CPU path); `rotate` turns q and k together, on CUDA
in one fused Triton pass (`attention_triton.rope`, about ten times fewer bytes moved than the torch
ops, which write float32 intermediates), with the backward turning the gradients back the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gvr.errors import InputError

Grid = tuple[int, int, int]
Rope = tuple[Tensor, Tensor]


def rope_table(grid: Grid, head_dim: int, theta: float, device: torch.device,
               scale: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Rope:
    """cos, sin of the 3D RoPE angles for a (t, h, w) token grid, each (T*H*W, head_dim/2) float32.

    The head dim splits as Wan's: 2*(head_dim//6) channels each for h and w, the rest for t. `scale`
    stretches positions (LR tokens placed in HR coordinates for token concatenation).
    """
    hw = 2 * (head_dim // 6)
    parts = []
    for n, d, s in zip(grid, (head_dim - 2 * hw, hw, hw), scale):
        inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        parts.append(torch.outer(torch.arange(n, dtype=torch.float64, device=device) * s, inv_freq))
    t, h, w = grid
    angles = torch.cat([parts[0][:, None, None].expand(t, h, w, -1),
                        parts[1][None, :, None].expand(t, h, w, -1),
                        parts[2][None, None, :].expand(t, h, w, -1)], dim=-1)  # (T, H, W, head_dim/2)
    angles = angles.reshape(t * h * w, -1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, rope: Rope) -> Tensor:
    """Rotate interleaved channel pairs of x (B, heads, L, D) by the table's angles (reference, float32)."""
    cos, sin = rope
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, heads, L, D/2) each
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def check_table(x: Tensor, rope: Rope) -> None:
    """One clear error when the table does not fit x (B, heads, L, D)."""
    cos, sin = rope
    want = (x.shape[2], x.shape[3] // 2)
    if x.shape[3] % 2 or tuple(cos.shape) != want or tuple(sin.shape) != want:
        raise InputError(f"RoPE table of shape {tuple(cos.shape)} / {tuple(sin.shape)} does not fit q and k of "
                         f"shape {tuple(x.shape)}: it needs (L, D/2) = {want} and an even head dim")


def rotate(q: Tensor, k: Tensor, rope: Rope | None) -> tuple[Tensor, Tensor]:
    """q and k (B, heads, L, D) rotated by `rope` (unchanged when it is None); one fused pass on CUDA."""
    if rope is None:
        return q, k
    check_table(q, rope)
    from gvr.models.attention import get_backend
    from gvr.models.attention_kernels import triton_usable

    if triton_usable(q) and get_backend() != "reference":  # the reference backend keeps the plain torch ops
        from gvr.models import attention_triton

        return attention_triton.rope(q, k, rope)
    return apply_rope(q, rope), apply_rope(k, rope)
