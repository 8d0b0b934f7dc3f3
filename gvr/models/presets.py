"""SimpleGVR architectures: the resolved `DiTConfig` stored in checkpoints and the named presets.

Dimension choices (paper §4.1.4 only says "initialized from a pretrained 1B T2V model"):

- `gvr-tiny`: CPU tests and the tiny pipeline; every component present, a few hundred K params.
- `gvr-small`: one GPU, minutes; ~60M params.
- `gvr-1b`: paper scale. Wan2.1-1.3B's width (1536, 12 heads of 128, FFN 8960) with 18 blocks instead
  of 30, which lands at ~1.0B parameters once each block has its extra 2D spatial attention.
- `wan2.1-t2v-1.3b`: exactly the public Wan2.1-T2V-1.3B transformer (dim 1536, 12 heads, 30 layers,
  FFN 8960, text 4096, freq 256, patch (1, 2, 2), 16 channels) plus SimpleGVR's new parts, so its
  diffusers weights load through `gvr.models.wan_import` (stage 1's pretrained init).

This module imports no torch at top level: `gvr.config` validates preset names through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gvr.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from gvr.config import ModelParams
    from gvr.models.dit import SimpleGVR

ATTENTION_KINDS = ("full", "temporal_unit", "window", "sparse_local")
UPSAMPLERS = ("upsampler", "interpolate", "resblock_interpolate", "token_concat")
INIT_KINDS = ("wan", "gvr")


@dataclass(frozen=True)
class DiTConfig:
    """The resolved SimpleGVR architecture; `config.json["model"]` of every checkpoint."""

    latent_channels: int = 16
    dim: int = 1536
    depth: int = 18
    heads: int = 12
    ffn_dim: int = 8960
    text_dim: int = 4096
    freq_dim: int = 256  # sinusoidal timestep features
    patch: tuple[int, int, int] = (1, 2, 2)
    # LR latent injection (paper §3.2): the latent upsampler or one of its three ablations.
    upsampler: str = "upsampler"
    upsampler_channels: int = 64
    temporal_factor: int = 4  # codec's frames per latent frame (T -> 4(T-1)+1 in the upsampler)
    # 3D attention: one kind per block (`attention[i]`), options shared by the blocks.
    attention: tuple[str, ...] = ("full",) * 18
    attention_unit: int = 5  # latent frames per temporal unit
    attention_window: tuple[int, int, int] = (5, 16, 16)  # Swin window (t, h, w) in tokens
    sparse_window: tuple[int, int] = (9, 12)  # sparse local unit (h, w) in tokens, arXiv §5.3.2
    sparse_topk: int = 1
    spatial_attention: bool = True  # the per-frame 2D self-attention in every block
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    checkpointing: bool = False  # activation checkpointing per block (training only)
    train_frames: int = 17  # pixel frames per training clip; longer inputs use temporal units

    def __post_init__(self):
        if len(self.attention) != self.depth:
            raise ConfigError(f"model.attention: {len(self.attention)} kinds for {self.depth} blocks")
        for kind in self.attention:
            if kind not in ATTENTION_KINDS:
                raise ConfigError(f"model.attention: {kind!r} is not one of {list(ATTENTION_KINDS)}")
        if self.upsampler not in UPSAMPLERS:
            raise ConfigError(f"model.upsampler: {self.upsampler!r} is not one of {list(UPSAMPLERS)}")
        if self.dim % self.heads:
            raise ConfigError(f"model.dim: {self.dim} is not divisible by model.heads={self.heads}")
        if (self.dim // self.heads) % 2:
            raise ConfigError(f"model.heads: head dim {self.dim // self.heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def train_latent_frames(self) -> int:
        return (self.train_frames - 1) // self.temporal_factor + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        """Rebuild from `to_dict()` output; unknown keys are an error (a newer or foreign artifact)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"model config has unknown keys {unknown}; was it written by a newer gvr?")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def architecture(self) -> dict[str, Any]:
        """Fields that decide the weights' shapes (everything but run-time switches)."""
        runtime = {"attention", "attention_unit", "attention_window", "sparse_window", "sparse_topk",
                   "checkpointing", "train_frames"}
        return {k: v for k, v in self.to_dict().items() if k not in runtime}


def _preset(depth: int, **kw) -> DiTConfig:
    return DiTConfig(depth=depth, attention=("full",) * depth, **kw)


PRESETS: dict[str, DiTConfig] = {
    "gvr-tiny": _preset(2, dim=64, heads=4, ffn_dim=128, text_dim=32, freq_dim=32, upsampler_channels=16,
                        attention_window=(2, 4, 4), sparse_window=(2, 2)),
    "gvr-small": _preset(8, dim=512, heads=8, ffn_dim=2048, upsampler_channels=32),
    "gvr-1b": _preset(18, dim=1536, heads=12, ffn_dim=8960, upsampler_channels=64),
    "wan2.1-t2v-1.3b": _preset(30, dim=1536, heads=12, ffn_dim=8960, upsampler_channels=64),
}

# ModelParams fields that map one-to-one onto DiTConfig fields.
_OVERRIDES = ("latent_channels", "dim", "depth", "heads", "ffn_dim", "text_dim", "upsampler",
              "upsampler_channels", "attention_unit", "sparse_topk", "spatial_attention", "checkpointing")
_TUPLE_OVERRIDES = ("attention_window", "sparse_window")


def resolve(model: ModelParams, *, text_dim: int | None = None, latent_channels: int | None = None) -> DiTConfig:
    """The preset named by `model.preset` with every non-null override applied.

    `text_dim` / `latent_channels` (from the text and codec sections) apply when the model section
    leaves them null; an explicit `model.text_dim` wins.
    """
    if model.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {model.preset!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[model.preset]
    kw: dict[str, Any] = {}
    if text_dim is not None:
        kw["text_dim"] = text_dim
    if latent_channels is not None:
        kw["latent_channels"] = latent_channels
    for name in _OVERRIDES:
        if getattr(model, name) is not None:
            kw[name] = getattr(model, name)
    for name in _TUPLE_OVERRIDES:
        if getattr(model, name) is not None:
            kw[name] = tuple(getattr(model, name))
    depth = kw.get("depth", base.depth)
    attention = model.attention if model.attention is not None else base.attention[0]
    kw["attention"] = (attention,) * depth if isinstance(attention, str) else tuple(attention)
    return dataclasses.replace(base, **kw)


def build_model(cfg: DiTConfig, *, device: torch.device | str = "cpu",
                dtype: torch.dtype | None = None) -> SimpleGVR:
    """A freshly initialised SimpleGVR (use `load_init` / `SimpleGVR.from_pretrained` for weights)."""
    import torch

    from gvr.models.dit import SimpleGVR

    with torch.device(device):
        model = SimpleGVR(cfg)
    return model.to(dtype) if dtype is not None else model


def load_init(model: ModelParams, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
              text_dim: int | None = None, latent_channels: int | None = None) -> SimpleGVR:
    """Stage 1's starting point: `resolve(model)` with weights from `model.init` (`model.init_kind`).

    `init_kind="wan"`: a diffusers WanTransformer3DModel directory (or .safetensors file) mapped by
    `gvr.models.wan_import`; `"gvr"`: a SimpleGVR artifact whose architecture matches the resolved one
    (attention kinds and other run-time switches come from the params, not the artifact).
    """
    if not model.init:
        raise ConfigError("model.init: no pretrained weights given")
    cfg = resolve(model, text_dim=text_dim, latent_channels=latent_channels)
    if model.init_kind == "wan":
        from gvr.models.wan_import import load_wan

        return load_wan(model.init, cfg, device=device, dtype=dtype)
    from gvr.models.dit import SimpleGVR

    loaded = SimpleGVR.from_pretrained(model.init, device=device, dtype=dtype)
    if loaded.cfg.architecture() != cfg.architecture():
        diff = sorted(k for k, v in cfg.architecture().items() if loaded.cfg.architecture().get(k) != v)
        raise InputError(f"model.init: {model.init} has another architecture than model.preset "
                         f"{model.preset!r} (differs in {', '.join(diff)})")
    loaded.cfg = cfg
    loaded.set_attention(cfg.attention)
    loaded.set_checkpointing(cfg.checkpointing)
    return loaded


__all__ = ["ATTENTION_KINDS", "UPSAMPLERS", "INIT_KINDS", "DiTConfig", "PRESETS", "resolve", "build_model",
           "load_init"]
