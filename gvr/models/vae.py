"""Video latent codecs: one `VideoCodec` interface over a weight-free tiny codec and diffusers' 3D VAEs.

Every codec maps a video `(B, 3, T, H, W)` in [-1, 1] to a normalised latent
`(B, C, (T - 1) // 4 + 1, H / 8, W / 8)` and back, the layout of the upstream T2V model's causal
3D VAE (paper §3.1: 8x spatial, 4x temporal, latent frame 0 holds pixel frame 0 alone).

Frame rule: a causal codec needs T = 4k + 1 frames. `encode` pads any other T by repeating the
last frame up to the next 4k + 1; `decode(latent)` returns 4(t - 1) + 1 frames and
`decode(latent, frames=T)` trims back to the caller's T. Height and width must be multiples of 8.

Normalisation: latents are returned as `(z - shift) * scale` per channel, the scale the base T2V
model was trained on: Wan uses per-channel `latents_mean`/`latents_std` (shift = mean,
scale = 1 / std); CogVideoX and HunyuanVideo use one `scaling_factor` (and CogVideoX an optional
`shift_factor`). The encoder's posterior mean is used, never a sample, so encoding is deterministic.

Memory: time is streamed by the backend's causal cache (Wan: one latent frame per step; CogVideoX:
two latent frames per step; HunyuanVideo: 16-frame temporal tiles blended by diffusers), and space
is tiled here: the fewest equal tiles of at most `tile_size` latent pixels, spread evenly so that
neighbours overlap by at least `tile_overlap`, blended with ramps that fall to zero towards each
tile's inner edges and normalised by the summed weights, so peak memory is set by `tile_size` and
no seam is visible. The tiny codec is exactly
local (8x8-pixel blocks, 4-frame groups), so tiling never changes its output.

Pretrained VAEs load through diffusers from a local directory (or a hub id when
`allow_download=True`); safetensors or `torch.load(weights_only=True)` only, as diffusers does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from gvr.errors import GVRError, InputError

SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4
CODEC_KINDS = ("tiny", "wan", "cogvideox", "hunyuan")

# --------------------------------------------------------------------------------------------
# Loading helpers shared by the codec, text-encoder and base-model loaders
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto`/None picks CUDA when available, else CPU; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r} ({e})") from None


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """Accept a torch dtype or its name (`bfloat16`, `torch.float16`, ...)."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise InputError(f"unknown floating-point dtype {dtype!r}")
    return value


def pretrained_location(path: str | Path | None, what: str, allow_download: bool = False,
                        subfolder: str | None = None) -> tuple[str, str | None]:
    """Check where pretrained weights come from; returns (path or hub id, subfolder to read).

    A local directory is used as is, or its `subfolder` when it is a full pipeline checkout (as the
    `*-Diffusers` repositories are). Anything else is a hub id, allowed only with `allow_download`.
    """
    if path is None or str(path) == "":
        raise InputError(f"{what}: no weights path given (set it in params.yaml)")
    local = Path(path).expanduser()
    if local.is_dir():
        if subfolder and (local / subfolder / "config.json").is_file() and not (local / "config.json").is_file():
            return str(local), subfolder
        if not (local / "config.json").is_file():
            raise InputError(f"{what}: {local} has no config.json (expected a diffusers/transformers model "
                             f"directory{' or a pipeline directory with ' + subfolder + '/' if subfolder else ''})")
        return str(local), None
    looks_local = local.is_absolute() or str(path).startswith((".", "~")) or str(path).count("/") != 1
    if looks_local or not allow_download:
        hint = "" if looks_local else " (a hub id: set allow_download=true to fetch it)"
        raise InputError(f"{what}: weights path {path} does not exist{hint}")
    return str(path), subfolder


def import_optional(module: str, extra: str = "hub") -> Any:
    """Import an optional dependency, or fail with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GVRError(f"{module} is not installed; install it with: pip install 'gvr[{extra}]'") from None


# --------------------------------------------------------------------------------------------
# Spatial tiling with overlap blending
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiling:
    """Spatial tiling of encode/decode, in latent pixels: tiles of at most `size`, overlapping by at least `overlap`."""

    enabled: bool = True
    size: int = 64
    overlap: int = 8

    def __post_init__(self):
        if self.size < 1 or not 0 <= self.overlap < self.size:
            raise InputError(f"tiling needs size >= 1 and 0 <= overlap < size; got size={self.size}, "
                             f"overlap={self.overlap}")


def tile_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, extent) of the fewest equal tiles of at most `size` covering [0, length), overlapping by >= `overlap`.

    Spreading the tiles evenly, rather than stepping by `size - overlap` and pushing the last tile
    against the end, keeps the recomputed area near the minimum (1.3x instead of 1.9x for
    64-pixel tiles on a 1080p latent).
    """
    if length <= size:
        return [(0, length)]
    count = math.ceil((length - overlap) / (size - overlap))
    extent = math.ceil((length - overlap) / count) + overlap  # <= size
    return [(round(i * (length - extent) / (count - 1)), extent) for i in range(count)]


def blend_ramp(n: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    """1D tile weights: 1 inside; towards each edge that has a neighbour, 0 over the outer quarter of
    the overlap (where a convolution's zero padding shows) and a linear ramp over its middle half."""
    w = torch.ones(n)
    if overlap > 0:
        margin = overlap // 4
        ramp = ((torch.arange(overlap) + 0.5 - margin) / (overlap - 2 * margin)).clamp(0, 1)
        if left:
            w[:overlap] = torch.minimum(w[:overlap], ramp[:n])
        if right:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0)[-n:])
    return w


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: tuple[int, int],
              tiling: Tiling, factor_in: int, factor_out: int) -> torch.Tensor:
    """Apply `fn` on overlapping spatial tiles of `x` (B, C, T, H, W) and blend the results.

    Tiles are laid on the latent grid `grid` = (h, w): latent pixel i covers input pixels
    [i * factor_in, (i + 1) * factor_in) and output pixels [i * factor_out, (i + 1) * factor_out).
    Outputs are accumulated with separable `blend_ramp` weights and divided by the summed weight,
    so every output pixel is a convex blend of the tiles that cover it.
    """
    h, w = grid
    size, overlap = tiling.size, tiling.overlap
    out = weight = None
    for y0, th in tile_spans(h, size, overlap):
        for x0, tw in tile_spans(w, size, overlap):
            tile = x[..., y0 * factor_in:(y0 + th) * factor_in, x0 * factor_in:(x0 + tw) * factor_in]
            res = fn(tile)  # (B, C', T', th * factor_out, tw * factor_out)
            if out is None:
                out = res.new_zeros((*res.shape[:3], h * factor_out, w * factor_out), dtype=torch.float32)
                weight = torch.zeros(h * factor_out, w * factor_out, device=res.device)
            ramp = overlap * factor_out
            wy = blend_ramp(th * factor_out, ramp, y0 > 0, y0 + th < h).to(res.device)
            wx = blend_ramp(tw * factor_out, ramp, x0 > 0, x0 + tw < w).to(res.device)
            wmap = wy[:, None] * wx[None, :]  # (th', tw')
            oy, ox = slice(y0 * factor_out, (y0 + th) * factor_out), slice(x0 * factor_out, (x0 + tw) * factor_out)
            out[..., oy, ox] += res.float() * wmap
            weight[oy, ox] += wmap
            del res
    return out.div_(weight)


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


class VideoCodec(nn.Module):
    """A causal 3D video codec (8x spatial, 4x temporal) with normalised latents; see the module docstring."""

    kind: str = "abstract"
    spatial_factor: int = SPATIAL_FACTOR
    temporal_factor: int = TEMPORAL_FACTOR

    def __init__(self, latent_channels: int, shift: torch.Tensor, scale: torch.Tensor, tiling: Tiling | None = None):
        super().__init__()
        self.latent_channels = latent_channels
        self.tiling = tiling or Tiling()
        # Normalisation constants stay float32 on the CPU whatever the module is cast to: they are
        # the checkpoint's contract with the base model, and bf16 would round them.
        self.latent_shift = shift.detach().float().clone().reshape(latent_channels)
        self.latent_scale = scale.detach().float().clone().reshape(latent_channels)

    # backend hooks: raw (unnormalised) latents; video frames 4k+1, sizes multiples of 8
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: that of the backend's weights."""
        return next(self.parameters()).dtype

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of the latent of a `frames`-frame video of `height` x `width` pixels."""
        if frames < 1:
            raise InputError(f"a video needs at least 1 frame; got {frames}")
        self._check_size(height, width)
        t = (frames - 1 + self.temporal_factor - 1) // self.temporal_factor + 1
        return self.latent_channels, t, height // self.spatial_factor, width // self.spatial_factor

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw codec latent -> the normalised latent the diffusion models see."""
        shift, scale = (v.to(raw.device).view(1, -1, 1, 1, 1) for v in (self.latent_shift, self.latent_scale))
        return (raw.float() - shift) * scale

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> raw codec latent."""
        shift, scale = (v.to(latent.device).view(1, -1, 1, 1, 1) for v in (self.latent_shift, self.latent_scale))
        return latent.float() / scale + shift

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> normalised latent (B, C, t, H/8, W/8), on the input's device and dtype."""
        in_range = self._check_video(video)
        video = pad_frames(video, self.temporal_factor)
        grid = (video.shape[-2] // self.spatial_factor, video.shape[-1] // self.spatial_factor)
        out = []
        for sample in video.split(1):  # one clip at a time bounds memory independently of B
            sample = sample.to(self.device, self.dtype)
            sample = sample if in_range else sample.clamp(-1, 1)  # resampling overshoot
            raw = self._spatial(self.encode_raw, sample, grid, self.spatial_factor, 1)
            out.append(self.normalize(raw).to(video.device, video.dtype))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """Normalised latent (B, C, t, h, w) -> video (B, 3, 4(t-1)+1, 8h, 8w) in [-1, 1]; `frames` trims to T."""
        self._check_latent(latent)
        full = (latent.shape[2] - 1) * self.temporal_factor + 1
        if frames is not None and not full - self.temporal_factor < frames <= full:
            raise InputError(f"decode(frames={frames}): a latent of {latent.shape[2]} frames decodes to {full} "
                             f"frames, from clips of {max(full - self.temporal_factor + 1, 1)} to {full} frames")
        out = []
        for sample in latent.split(1):
            raw = self.denormalize(sample.to(self.device)).to(self.dtype)
            video = self._spatial(self.decode_raw, raw, tuple(latent.shape[-2:]), 1, self.spatial_factor)
            out.append(video.clamp_(-1, 1)[:, :, :frames].to(latent.device, latent.dtype))
        return torch.cat(out)

    def _spatial(self, fn, x: torch.Tensor, grid: tuple[int, int], factor_in: int, factor_out: int) -> torch.Tensor:
        if not self.tiling.enabled or max(grid) <= self.tiling.size:
            return fn(x)
        return tiled_map(fn, x, grid, self.tiling, factor_in, factor_out)

    def _check_size(self, height: int, width: int) -> None:
        f = self.spatial_factor
        if height < f or width < f or height % f or width % f:
            raise InputError(f"video height and width must be positive multiples of {f}; got {height}x{width} "
                             "(resize or crop first)")

    def _check_video(self, video: Any) -> bool:
        """Raise InputError for unusable videos; returns whether the values already lie in [-1, 1]."""
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise InputError(f"{self.kind} codec: video must be a tensor (B, 3, T, H, W); got {shape}")
        if not video.is_floating_point():
            raise InputError(f"{self.kind} codec: video must be floating point in [-1, 1]; got {video.dtype} "
                             "(uint8 frames: x.float() / 127.5 - 1)")
        if video.shape[0] == 0 or video.shape[2] == 0:
            raise InputError(f"{self.kind} codec: empty video {tuple(video.shape)}")
        self._check_size(video.shape[3], video.shape[4])
        lo, hi = video.amin().item(), video.amax().item()  # reductions: no full-size temporaries
        if not math.isfinite(lo) or not math.isfinite(hi):  # NaN propagates through min/max
            raise InputError(f"{self.kind} codec: video contains NaN or Inf values")
        peak = max(-lo, hi)
        if peak > 1.5:  # resampling overshoot is clamped; this is data on another scale
            raise InputError(f"{self.kind} codec: video values must lie in [-1, 1]; got values up to {peak:.3g} "
                             "(0-255 data? use x / 127.5 - 1)")
        return peak <= 1.0

    def _check_latent(self, latent: Any) -> None:
        c = self.latent_channels
        if not isinstance(latent, torch.Tensor) or latent.ndim != 5 or latent.shape[1] != c:
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise InputError(f"{self.kind} codec: latent must be a tensor (B, {c}, t, h, w); got {shape}")
        if not latent.is_floating_point():
            raise InputError(f"{self.kind} codec: latent must be floating point; got {latent.dtype}")
        if 0 in latent.shape:
            raise InputError(f"{self.kind} codec: empty latent {tuple(latent.shape)}")
        _check_finite(latent, f"{self.kind} codec: latent")

    def extra_repr(self) -> str:
        return f"kind={self.kind}, channels={self.latent_channels}, tiling={self.tiling}"


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise InputError(f"{what} contains NaN or Inf values")


def pad_frames(video: torch.Tensor, factor: int = TEMPORAL_FACTOR) -> torch.Tensor:
    """Pad (B, C, T, H, W) to the next T = factor * k + 1 by repeating the last frame."""
    extra = (-(video.shape[2] - 1)) % factor
    if extra == 0:
        return video
    return torch.cat([video, video[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)


# --------------------------------------------------------------------------------------------
# The tiny codec: a fixed causal 3D-DCT projection
# --------------------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix, rows are frequencies."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(np.pi * (i + 0.5) * k / n) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def _ar1(n: int, rho: float) -> np.ndarray:
    i = np.arange(n)
    return rho ** np.abs(i[:, None] - i[None, :])


@lru_cache(maxsize=8)
def dct_atoms(channels: int, rho_space: float = 0.95, rho_time: float = 0.9,
              rho_colour: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `channels` 3D-DCT atoms over (RGB, 4 frames, 8, 8) blocks with the largest expected energy.

    Energy is the coefficient variance under the textbook separable model for which the DCT is
    near-optimal: AR(1) correlation `rho_space` between neighbouring pixels, `rho_time` between
    frames and `rho_colour` between RGB channels of one pixel. Returns (atoms (C, 768) in
    "(c f p q)" order, their variances (C,), their frequencies (C, 4) as (colour, t, y, x)).
    """
    dc, dt, ds = _dct_matrix(3), _dct_matrix(TEMPORAL_FACTOR), _dct_matrix(SPATIAL_FACTOR)
    colour = np.full((3, 3), rho_colour) + (1 - rho_colour) * np.eye(3)
    var = [np.diag(d @ cov @ d.T) for d, cov in ((dc, colour), (dt, _ar1(TEMPORAL_FACTOR, rho_time)),
                                                   (ds, _ar1(SPATIAL_FACTOR, rho_space)),
                                                   (ds, _ar1(SPATIAL_FACTOR, rho_space)))]
    energy = np.einsum("a,b,c,d->abcd", *var)
    total = energy.size
    if channels > total:
        raise InputError(f"tiny codec: at most {total} channels; got {channels}")
    order = np.argsort(-energy.ravel(), kind="stable")[:channels]
    freqs = np.stack(np.unravel_index(order, energy.shape), axis=1)
    atoms = np.stack([np.einsum("a,b,c,d->abcd", dc[a], dt[b], ds[y], ds[x]).ravel() for a, b, y, x in freqs])
    return atoms, energy.ravel()[order], freqs


class TinyCodec(VideoCodec):
    """Weight-free causal linear codec: each latent pixel is the low-frequency 3D-DCT of an RGB 8x8(x4) block.

    Latent frame 0 encodes pixel frame 0 alone (as if repeated 4 times, the causal-padding
    convention), latent frame j > 0 encodes pixel frames 4j-3..4j. Each latent pixel holds the
    projections of its block onto the C atoms with the largest expected energy (`dct_atoms`); the
    atoms are orthonormal, so decode (the transpose) is the least-squares reconstruction, a
    low-passed video. Latents are scaled to about unit variance for video with pixel std 0.5.
    """

    kind = "tiny"
    pixel_std = 0.5  # typical std of natural video in [-1, 1]

    def __init__(self, channels: int = 16, tiling: Tiling | None = None):
        atoms, energy, _ = dct_atoms(channels)
        std = np.sqrt(energy) * self.pixel_std
        super().__init__(channels, torch.zeros(channels), torch.from_numpy(1 / std), tiling)
        # A frozen parameter rather than a buffer, so device/dtype follow the usual module rules.
        self.atoms = nn.Parameter(torch.from_numpy(atoms).float(), requires_grad=False)  # (C, 3 * 4 * 8 * 8)

    def _blocks(self, video: torch.Tensor) -> torch.Tensor:
        first = video[:, :, :1].expand(-1, -1, self.temporal_factor, -1, -1)
        video = torch.cat([first, video[:, :, 1:]], dim=2)  # (B, 3, 4t, H, W)
        f, p = self.temporal_factor, self.spatial_factor
        return rearrange(video, "b c (t f) (h p) (w q) -> b t h w (c f p q)", f=f, p=p, q=p)

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        coeffs = self._blocks(video) @ self.atoms.T  # (B, t, h, w, C)
        return rearrange(coeffs, "b t h w k -> b k t h w")

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        blocks = rearrange(latent, "b k t h w -> b t h w k") @ self.atoms  # (B, t, h, w, 768)
        f, p = self.temporal_factor, self.spatial_factor
        video = rearrange(blocks, "b t h w (c f p q) -> b c (t f) h p w q", c=3, f=f, p=p, q=p)
        video = rearrange(video, "b c t h p w q -> b c t (h p) (w q)")  # (B, 3, 4t, H, W)
        first = video[:, :, :f].mean(dim=2, keepdim=True)  # least squares for the repeated frame 0
        return torch.cat([first, video[:, :, f:]], dim=2)

    def save(self, path: str | Path) -> None:
        """Write the atoms and config as one safetensors file (atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"atoms": self.atoms.float().contiguous(), "latent_scale": self.latent_scale.contiguous(),
                   "latent_shift": self.latent_shift.contiguous()}
        save_file(tensors, str(tmp), metadata={"config": json.dumps({"kind": "tiny", "channels": self.latent_channels})})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, channels: int | None = None, tiling: Tiling | None = None) -> TinyCodec:
        """Read a file written by `save`; `channels`, when given, must match it."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            path = path / "codec.safetensors"
        if not path.is_file():
            raise InputError(f"tiny codec: weights file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                config = json.loads((f.metadata() or {}).get("config", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for corrupt files
            raise InputError(f"tiny codec: {path} is not a readable safetensors file ({e})") from None
        stored = config.get("channels", tensors.get("atoms", torch.empty(0)).shape[0])
        if config.get("kind") != "tiny" or "atoms" not in tensors:
            raise InputError(f"tiny codec: {path} is not a tiny-codec checkpoint (kind={config.get('kind')!r})")
        if channels is not None and stored != channels:
            raise InputError(f"tiny codec: {path} has {stored} latent channels but {channels} were asked for")
        codec = cls(stored, tiling)
        atoms = tensors["atoms"]
        if atoms.shape != codec.atoms.shape:
            raise InputError(f"tiny codec: {path} has atoms of shape {tuple(atoms.shape)}, "
                             f"expected {tuple(codec.atoms.shape)}")
        with torch.no_grad():
            codec.atoms.copy_(atoms)
        codec.latent_scale = tensors["latent_scale"].float()
        codec.latent_shift = tensors["latent_shift"].float()
        return codec


# --------------------------------------------------------------------------------------------
# diffusers VAEs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Backend:
    """How one diffusers VAE class exposes its channels, factors and latent normalisation."""

    cls: str
    channels: Callable[[Any], int]
    factors: Callable[[Any], tuple[int, int]]  # (spatial, temporal)
    normalisation: Callable[[Any], tuple[list[float], list[float]]]  # per-channel (shift, scale)


def _wan_factors(cfg) -> tuple[int, int]:
    spatial = cfg.get("scale_factor_spatial") or 2 ** (len(cfg["dim_mult"]) - 1)
    temporal = cfg.get("scale_factor_temporal") or 2 ** sum(cfg["temperal_downsample"])
    return int(spatial), int(temporal)


def _wan_normalisation(cfg) -> tuple[list[float], list[float]]:
    return list(cfg["latents_mean"]), [1.0 / s for s in cfg["latents_std"]]


def _scaling_factor(cfg) -> tuple[list[float], list[float]]:
    c = cfg["latent_channels"]
    return [float(cfg.get("shift_factor") or 0.0)] * c, [float(cfg["scaling_factor"])] * c


BACKENDS = {
    "wan": _Backend("AutoencoderKLWan", lambda cfg: cfg["z_dim"], _wan_factors, _wan_normalisation),
    "cogvideox": _Backend(
        "AutoencoderKLCogVideoX", lambda cfg: cfg["latent_channels"],
        lambda cfg: (2 ** (len(cfg["block_out_channels"]) - 1), int(cfg["temporal_compression_ratio"])),
        _scaling_factor),
    "hunyuan": _Backend(
        "AutoencoderKLHunyuanVideo", lambda cfg: cfg["latent_channels"],
        lambda cfg: (int(cfg["spatial_compression_ratio"]), int(cfg["temporal_compression_ratio"])),
        _scaling_factor),
}


class DiffusersCodec(VideoCodec):
    """A diffusers 3D VAE (Wan2.1, CogVideoX, HunyuanVideo) behind the `VideoCodec` interface."""

    def __init__(self, kind: str, vae: nn.Module, tiling: Tiling | None = None, source: str = "<module>"):
        backend = BACKENDS[kind]
        cfg = dict(vae.config)
        spatial, temporal = backend.factors(cfg)
        if (spatial, temporal) != (SPATIAL_FACTOR, TEMPORAL_FACTOR):
            raise InputError(f"{kind} codec: {source} compresses {spatial}x spatially and {temporal}x in time; "
                             f"gvr needs {SPATIAL_FACTOR}x and {TEMPORAL_FACTOR}x")
        channels = int(backend.channels(cfg))
        shift, scale = backend.normalisation(cfg)
        if len(shift) != channels or len(scale) != channels:
            raise InputError(f"{kind} codec: {source} has {channels} latent channels but normalisation "
                             f"statistics for {len(shift)}")
        super().__init__(channels, torch.tensor(shift), torch.tensor(scale), tiling)
        self.kind = kind
        # diffusers' own spatial tiling would tile a second time inside our tiles.
        if hasattr(vae, "disable_tiling"):
            vae.disable_tiling()
        self.vae = vae.eval().requires_grad_(False)

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video).latent_dist.mode()

    def decode_raw(self, latent: torch.Tensor) -> torch.Tensor:
        video = self.vae.decode(latent).sample
        # CogVideoX decodes an even number of latent frames as whole 4-frame groups: the surplus
        # three frames come first, all decoded from latent frame 0 (which holds pixel frame 0).
        return video[:, :, -((latent.shape[2] - 1) * self.temporal_factor + 1):]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_codec(kind: str, path: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = torch.float32, allow_download: bool = False,
               channels: int | None = None, tiling: bool = True, tile_size: int = 64,
               tile_overlap: int = 8) -> VideoCodec:
    """Build a codec of `kind` (`tiny`, `wan`, `cogvideox`, `hunyuan`).

    Args:
        kind: codec family.
        path: local model directory (a VAE directory or a `*-Diffusers` pipeline directory with a
            `vae/` subfolder); for `tiny`, an optional safetensors file written by `TinyCodec.save`.
            A hub id is accepted only with `allow_download=True`.
        device, dtype: where and in which precision the codec computes.
        channels: expected latent channels; a checkpoint with another count is refused.
            Defaults to 16 for `tiny` and to the checkpoint's own count otherwise.
        tiling, tile_size, tile_overlap: spatial tiling in latent pixels (see the module docstring).
    """
    if kind not in CODEC_KINDS:
        raise InputError(f"unknown codec kind {kind!r} (choose from {', '.join(CODEC_KINDS)})")
    tiles = Tiling(tiling, tile_size, tile_overlap)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if kind == "tiny":
        codec = TinyCodec.load(path, channels, tiles) if path else TinyCodec(channels or 16, tiles)
        return codec.to(device=device, dtype=dtype)
    diffusers = import_optional("diffusers")
    backend = BACKENDS[kind]
    where, subfolder = pretrained_location(path, f"{kind} codec", allow_download, subfolder="vae")
    try:
        vae = getattr(diffusers, backend.cls).from_pretrained(
            where, subfolder=subfolder, torch_dtype=dtype, local_files_only=not allow_download)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise InputError(f"{kind} codec: cannot load a {backend.cls} from {path}: {_first_line(e)}") from None
    codec = DiffusersCodec(kind, vae, tiles, source=str(path))
    if channels is not None and codec.latent_channels != channels:
        raise InputError(f"{kind} codec: checkpoint {path} has {codec.latent_channels} latent channels "
                         f"but codec.channels is {channels}")
    return codec.to(device)


def codec_from_params(params, device: str | torch.device | None = None,
                      dtype: str | torch.dtype | None = None) -> VideoCodec:
    """Build the codec described by a `CodecParams`; its own device/dtype win over the ones passed here."""
    return load_codec(
        params.kind, params.path,
        device=params.device or device or "auto",
        dtype=params.dtype or dtype or torch.float32,
        allow_download=params.allow_download,
        channels=params.channels,
        tiling=params.tiling, tile_size=params.tile_size, tile_overlap=params.tile_overlap,
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
