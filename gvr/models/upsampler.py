"""LR latent upsamplers (paper §3.2, Eq. 6): bring the noisy LR latent c_t to the HR latent's size.

`LatentUpsampler` is SimpleGVR's: two 3D residual blocks expand channels and then time, so that each
latent frame maps back to the RGB frames it encodes (T -> 4(T-1)+1 for a causal 4x video VAE whose first
latent frame holds one frame), a bilinear per-frame resize to any (H, W), and two 3D residual blocks that
fold time back (4(T-1)+1 -> T) and reduce channels. The ablations of §4.3.1 share the contract
`forward(c, size): (B, C, T, h, w) -> (B, C, T, H, W)`:

- `LatentInterpolate`: bilinear resize only ("latent interpolation + channel concatenation");
- `LatentUpsampler(time_factor=1)`: "3D ResBlocks + latent interpolation", channels expanded, time not.

The fourth ablation, token concatenation, is no resize at all and lives in `gvr.models.dit`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at every (t, h, w) position, learned per-channel gain.

    Per-position (unlike GroupNorm) so that the upsampler is local in time: its output does not depend
    on how many frames the clip has (17 in training, 77+ at inference) or on distant frames.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.float().square().mean(dim=1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * rms).type_as(x) * self.weight.view(-1, 1, 1, 1)


def unfold_time(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, r*C, T, H, W) -> (B, C, r(T-1)+1, H, W): each step's r sub-frames; the first keeps its last."""
    x = rearrange(x, "b (c r) t h w -> b c (t r) h w", r=r)
    return x[:, :, r - 1:]


def fold_time(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, r(T-1)+1, H, W) -> (B, r*C, T, H, W); the inverse of `unfold_time` (first frame repeated)."""
    x = torch.cat([x[:, :, :1].expand(-1, -1, r - 1, -1, -1), x], dim=2)
    return rearrange(x, "b c (t r) h w -> b (c r) t h w", r=r)


def resize_frames(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear per-frame resize of (B, C, T, h, w) to (B, C, T, H, W); any ratio, not only 2x."""
    b = x.shape[0]
    x = rearrange(x, "b c t h w -> (b t) c h w")
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return rearrange(x, "(b t) c h w -> b c t h w", b=b)


class ResBlock3D(nn.Module):
    """Norm-SiLU-Conv3d twice with a skip; optionally unfolds (`up`) or folds (`down`) time by r."""

    def __init__(self, cin: int, cout: int, *, time: str = "same", r: int = 4):
        super().__init__()
        self.time, self.r = time, r
        mid_in = cin * r if time == "down" else cin  # folding time stacks r frames on channels first
        last_out = cout * r if time == "up" else cout  # unfolding needs r sub-frames of channels
        self.norm1 = ChannelRMSNorm(mid_in)
        self.conv1 = nn.Conv3d(mid_in, cout, 3, padding=1)
        self.norm2 = ChannelRMSNorm(cout)
        self.conv2 = nn.Conv3d(cout, last_out, 3, padding=1)
        self.skip = nn.Conv3d(mid_in, last_out, 1) if mid_in != last_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time == "down":
            x = fold_time(x, self.r)  # (B, r*C, T, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        x = self.skip(x) + h
        return unfold_time(x, self.r) if self.time == "up" else x


class LatentUpsampler(nn.Module):
    """SimpleGVR's latent upsampler: expand channels and time, bilinear resize, reduce back (Eq. 6).

    Args:
        channels: latent channels C (in and out).
        hidden: channels of the expanded latent.
        time_factor: frames per latent frame of the codec (4); 1 gives the channel-only ablation.
    """

    def __init__(self, channels: int, hidden: int, time_factor: int = 4):
        super().__init__()
        time_up, time_down = ("up", "down") if time_factor > 1 else ("same", "same")
        self.expand = nn.Sequential(ResBlock3D(channels, hidden),
                                    ResBlock3D(hidden, hidden, time=time_up, r=time_factor))
        self.reduce = nn.Sequential(ResBlock3D(hidden, hidden, time=time_down, r=time_factor),
                                    ResBlock3D(hidden, channels))

    def forward(self, c: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.expand(c)  # (B, hidden, 4(T-1)+1, h, w): one step per RGB frame
        x = resize_frames(x, size)  # (B, hidden, 4(T-1)+1, H, W)
        return self.reduce(x)  # (B, C, T, H, W)


class LatentInterpolate(nn.Module):
    """Ablation: bilinear resize of the latent itself (no parameters)."""

    def forward(self, c: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_frames(c, size)


def build_upsampler(kind: str, channels: int, hidden: int, time_factor: int = 4) -> nn.Module | None:
    """The module for `DiTConfig.upsampler`; None for token concatenation (handled by the DiT)."""
    if kind == "upsampler":
        return LatentUpsampler(channels, hidden, time_factor)
    if kind == "resblock_interpolate":
        return LatentUpsampler(channels, hidden, time_factor=1)
    if kind == "interpolate":
        return LatentInterpolate()
    if kind == "token_concat":
        return None
    raise ValueError(f"unknown upsampler {kind!r}")
