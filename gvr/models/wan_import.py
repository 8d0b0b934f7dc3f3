"""Stage 1's pretrained init: a Wan2.1 T2V transformer's weights mapped onto SimpleGVR.

Reads a diffusers `WanTransformer3DModel` (a `transformer/` folder or its parent pipeline folder, one
safetensors file or index-sharded ones) or the original Wan release's single file, with no diffusers
import: only safetensors. Wan's blocks are SimpleGVR's blocks without the 2D spatial attention, so
every Wan weight has a place; what is new starts so that step 0 behaves like the base model:

- patch embedding: Wan's columns for z_t, zero columns for the upsampled LR latent;
- modulation: Wan's 6 rows (3D attention, FFN), zero rows for the 2D attention, so its gate is 0;
- the 2D spatial attention copies the block's 3D attention weights (a pretrained starting point that
  the zero gate keeps silent until training opens it);
- the LR noise-level embedding ends in a zero layer; the upsampler is freshly initialised (its output
  only enters through the zero patch-embedding columns).

Wan attends to zero-padded text tokens where SimpleGVR masks padding; with `text_mask=None` the
imported model equals Wan exactly (velocity `eps - x0` in both, Wan's timestep is 1000 t).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gvr.errors import InputError
from gvr.models.dit import SimpleGVR, load_state
from gvr.models.presets import DiTConfig

# Original Wan release names -> diffusers names (applied as substring renames, in order).
_ORIGINAL_TO_DIFFUSERS = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm3", "norm2"),  # the original's cross-attention norm is called norm3
    ("self_attn.o", "attn1.to_out.0"),
    ("self_attn.", "attn1.to_"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("cross_attn.", "attn2.to_"),
    ("to_norm_", "norm_"),  # self_attn.norm_q -> attn1.to_norm_q -> attn1.norm_q
)

# SimpleGVR name <- diffusers name, copied as they are; "{i}" is the block index.
_DIRECT = {
    "time_embed.fc1": "condition_embedder.time_embedder.linear_1",
    "time_embed.fc2": "condition_embedder.time_embedder.linear_2",
    "text_embed.fc1": "condition_embedder.text_embedder.linear_1",
    "text_embed.fc2": "condition_embedder.text_embedder.linear_2",
    "head": "proj_out",
    "blocks.{i}.attn3d.out": "blocks.{i}.attn1.to_out.0",
    "blocks.{i}.attn3d.norm_q": "blocks.{i}.attn1.norm_q",
    "blocks.{i}.attn3d.norm_k": "blocks.{i}.attn1.norm_k",
    "blocks.{i}.cross.q": "blocks.{i}.attn2.to_q",
    "blocks.{i}.cross.out": "blocks.{i}.attn2.to_out.0",
    "blocks.{i}.cross.norm_q": "blocks.{i}.attn2.norm_q",
    "blocks.{i}.cross.norm_k": "blocks.{i}.attn2.norm_k",
    "blocks.{i}.cross_norm": "blocks.{i}.norm2",
    "blocks.{i}.ffn.fc1": "blocks.{i}.ffn.net.0.proj",
    "blocks.{i}.ffn.fc2": "blocks.{i}.ffn.net.2",
}
# SimpleGVR fused projection <- diffusers projections concatenated on the output axis.
_FUSED = {
    "blocks.{i}.attn3d.qkv": ("blocks.{i}.attn1.to_q", "blocks.{i}.attn1.to_k", "blocks.{i}.attn1.to_v"),
    "blocks.{i}.cross.kv": ("blocks.{i}.attn2.to_k", "blocks.{i}.attn2.to_v"),
}


def to_diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-release Wan state dict to diffusers names (diffusers ones pass through)."""
    if not any(k.startswith("time_embedding.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        for old, new in _ORIGINAL_TO_DIFFUSERS:
            key = key.replace(old, new)
        out[key] = value
    return out


def check_wan_config(wan: dict, cfg: DiTConfig, source: str) -> None:
    """A diffusers Wan config must have the preset's dimensions (one line naming what differs)."""
    expected = {"num_attention_heads": cfg.heads, "attention_head_dim": cfg.head_dim,
                "in_channels": cfg.latent_channels, "out_channels": cfg.latent_channels,
                "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim,
                "num_layers": cfg.depth, "patch_size": list(cfg.patch), "cross_attn_norm": cfg.cross_attn_norm}
    diff = [f"{k}={wan.get(k)!r} (model needs {v!r})" for k, v in expected.items()
            if k in wan and (list(wan[k]) if isinstance(wan[k], (list, tuple)) else wan[k]) != v]
    if wan.get("image_dim") or wan.get("added_kv_proj_dim"):
        diff.append("image conditioning (an I2V model; a T2V model is needed)")
    if diff:
        raise InputError(f"{source}: Wan config does not match the model preset: {'; '.join(diff)}")


def wan_to_gvr(wan: dict[str, torch.Tensor], cfg: DiTConfig,
               fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SimpleGVR state dict from a (diffusers-named) Wan one; `fresh` supplies the new parts' init."""
    wan = dict(wan)
    out = dict(fresh)

    def take(name: str) -> torch.Tensor:
        if name not in wan:
            raise InputError(f"Wan weights: {name} missing; is this a Wan2.1 T2V transformer of the preset's size?")
        return wan.pop(name)

    def pad_rows(src: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
        """src in the leading slots of `dim`, zeros after (the new parts' modulation rows)."""
        dst = torch.zeros_like(like, dtype=src.dtype, device=src.device)
        dst.narrow(dim, 0, src.shape[dim]).copy_(src)
        return dst

    # 1. patch embedding: Wan's conv as the z_t columns, zero columns for the LR condition
    w = take("patch_embedding.weight").reshape(cfg.dim, -1)  # (D, C*pt*ph*pw)
    out["patch_embed.weight"] = pad_rows(w, fresh["patch_embed.weight"], 1)
    out["patch_embed.bias"] = take("patch_embedding.bias")
    # 2. shared time projection and per-block tables: Wan's 6 rows first, zero rows for the 2D attention
    for suffix in ("weight", "bias"):
        out[f"time_proj.{suffix}"] = pad_rows(take(f"condition_embedder.time_proj.{suffix}"),
                                              fresh[f"time_proj.{suffix}"], 0)
    out["head_modulation"] = take("scale_shift_table")
    for i in range(cfg.depth):
        out[f"blocks.{i}.modulation"] = pad_rows(take(f"blocks.{i}.scale_shift_table"),
                                                 fresh[f"blocks.{i}.modulation"], 1)
    # 3. one-to-one and fused weights
    for ours, theirs in _DIRECT.items():
        for i in range(cfg.depth) if "{i}" in ours else [None]:
            for suffix in ("weight", "bias"):
                key = f"{ours.format(i=i)}.{suffix}"
                if key in fresh:
                    out[key] = take(f"{theirs.format(i=i)}.{suffix}")
    for i in range(cfg.depth):
        for ours, parts in _FUSED.items():
            for suffix in ("weight", "bias"):
                out[f"{ours.format(i=i)}.{suffix}"] = torch.cat([take(f"{p.format(i=i)}.{suffix}") for p in parts])
        # 4. the new 2D spatial attention starts as a copy of the block's 3D attention (gate 0)
        if cfg.spatial_attention:
            for part in ("qkv", "out", "norm_q", "norm_k"):
                for suffix in ("weight", "bias"):
                    src = f"blocks.{i}.attn3d.{part}.{suffix}"
                    if src in out and f"blocks.{i}.attn2d.{part}.{suffix}" in fresh:
                        out[f"blocks.{i}.attn2d.{part}.{suffix}"] = out[src].clone()
    leftover = sorted(k for k in wan if "norm_added" not in k)
    if leftover:
        raise InputError(f"Wan weights: {len(leftover)} weights have no place in SimpleGVR (e.g. {leftover[0]}); "
                         "is this a T2V transformer?")
    return out


def _weight_files(path: Path) -> tuple[list[Path], Path | None]:
    """Safetensors files and the config.json of a Wan transformer at `path`."""
    if path.is_file():
        return [path], path.parent / "config.json" if (path.parent / "config.json").is_file() else None
    if (path / "transformer").is_dir():  # a whole diffusers pipeline folder
        path = path / "transformer"
    config = path / "config.json" if (path / "config.json").is_file() else None
    index = sorted(path.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [path / s for s in shards], config
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"{path}: no .safetensors weights found (expected a Wan transformer folder)")
    return files, config


def read_wan_state(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Wan transformer weights (diffusers names) and its config (empty if there is none)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: Wan weights not found")
    files, config = _weight_files(path)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: shard listed in the index is missing")
        try:
            state.update(load_file(str(f), device=str(device)))
        except Exception as e:
            raise InputError(f"{f}: unreadable safetensors file ({e})") from None
    return to_diffusers_names(state), json.loads(config.read_text()) if config else {}


def load_wan(path: str | Path, cfg: DiTConfig, *, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> SimpleGVR:
    """SimpleGVR with `cfg`'s architecture initialised from the Wan transformer at `path`."""
    state, wan_cfg = read_wan_state(path, device)
    check_wan_config(wan_cfg, cfg, str(path))
    if cfg.upsampler == "token_concat":
        raise InputError("model.upsampler=token_concat has no channel-concatenation input to import Wan into")
    with torch.device("meta"):
        model = SimpleGVR(cfg)
    model.to_empty(device=device)  # storage for the new parts, then their usual init
    model.reset_parameters()
    expected = math.prod(cfg.patch) * cfg.latent_channels
    if state.get("patch_embedding.weight") is not None and state["patch_embedding.weight"][0].numel() != expected:
        raise InputError(f"{path}: Wan patch embedding takes {state['patch_embedding.weight'][0].numel()} "
                         f"values per patch, the model {expected}")
    mapped = wan_to_gvr(state, cfg, model.state_dict())
    load_state(model, mapped, str(path), dtype=dtype or torch.float32)
    return model
