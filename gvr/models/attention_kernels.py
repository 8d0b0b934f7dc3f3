"""GPU fast paths for `gvr.models.attention`: block-sparse FlexAttention and optional flash-attn varlen.

FlexAttention works on the tiled layout of `attention.tiling`: every tile (window or sparse-local
unit) is padded to a multiple of FLEX_BLOCK slots, so one tile is one or more whole kernel blocks and
the block mask says exactly which key tiles each query tile reads. The `mask_mod` repeats the full
rule (key slot holds a token, key tile allowed for the query tile), so the result is right even where
FlexAttention runs unfused (CPU, eager); compiled on CUDA it only refines the listed blocks.

flash-attn ships as source only and is often absent: nothing here imports it at module level, and
`flash_available()` says whether the varlen path can run.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

FLEX_BLOCK = 128  # FlexAttention's sparse block on CUDA: tiles are padded to a multiple of it


def flex_multiple(device: torch.device) -> int:
    """Tile padding for FlexAttention: whole kernel blocks on CUDA; none for the unfused CPU implementation."""
    return FLEX_BLOCK if device.type == "cuda" else 1


# --------------------------------------------------------------------------------------------
# FlexAttention
# --------------------------------------------------------------------------------------------


@functools.cache
def _flex_installed() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("triton") is not None


def flex_usable(q: Tensor) -> bool:
    """Whether the compiled FlexAttention path can run on these inputs."""
    return q.is_cuda and q.shape[-1] >= 16 and _flex_installed()


RECOMPILE_LIMIT = 64  # compiled variants kept per function: shapes x (training, inference) x mask kinds


def allow_recompiles() -> None:
    """Let torch.compile keep a kernel per shape for more than its default 8 shapes.

    Past the limit dynamo silently runs the function uncompiled, which for FlexAttention means a
    dense (L, L) score matrix per head: slow, huge, and exactly what the fast path exists to avoid.
    A DiT sees a handful of shapes, tests and benchmarks a few dozen.
    """
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


@functools.cache
def _compiled_flex():
    """flex_attention compiled once; torch.compile keeps one kernel per input shape (dynamic=False)."""
    from torch.nn.attention.flex_attention import flex_attention

    allow_recompiles()
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _from_kv_blocks_takes_compute_q_blocks() -> bool:
    from torch.nn.attention.flex_attention import BlockMask

    return "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters


def _compact(flags: Tensor, index: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Per row: how many flags are set, and `index` with the flagged entries first, zero-padded to `width`."""
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True)
    picked = index.gather(-1, order).to(torch.int32)
    return flags.sum(-1, dtype=torch.int32), F.pad(picked, (0, width - picked.shape[-1]))


def tile_block_mask(units: Tensor | None, valid: Tensor, groups: int, size: int, backward: bool,
                    tile_rule: bool = True):
    """BlockMask over tiled tokens where query tile g reads key tiles `units[b, h, g]`, or only itself if None.

    `valid` (groups, size) marks real token slots. A tile of `size` slots spans size / FLEX_BLOCK kernel
    blocks (one block of `size` on CPU); key blocks holding only padding are skipped, and blocks with no
    padding are listed as full, so the kernel skips `mask_mod` there. The q-side lists, which only the
    backward pass reads, are built only when `backward` is set (where torch can skip them).

    The block lists are exact at tile level, so the fused kernel needs `mask_mod` only for padding
    slots; `tile_rule` adds the tile rule to it for the unfused implementation, which reads no lists
    (and costs integer divisions and a gather per score in a kernel).
    """
    from torch.nn.attention.flex_attention import BlockMask

    device = valid.device
    flat_valid = valid.flatten()
    per_tile = size // FLEX_BLOCK if size % FLEX_BLOCK == 0 else 1
    block = size // per_tile
    slots = valid.view(groups, per_tile, block)
    nonempty, whole = slots.any(-1), slots.all(-1)  # (G, blocks per tile)
    if not tile_rule:
        def mask_mod(b, h, q_idx, kv_idx):
            return flat_valid[kv_idx]
    elif units is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return flat_valid[kv_idx] & (q_idx // size == kv_idx // size)
    else:
        allowed = torch.zeros(*units.shape[:-1], groups, dtype=torch.bool, device=device)
        allowed.scatter_(-1, units, True)  # (B, heads, G, G)

        def mask_mod(b, h, q_idx, kv_idx):
            return flat_valid[kv_idx] & allowed[b, h, q_idx // size, kv_idx // size]

    if units is None:
        units = torch.arange(groups, device=device)[None, None, :, None]

    # 1. key blocks of every allowed tile, per query tile: (B, heads, G, units * blocks per tile)
    kv = (units[..., None] * per_tile + torch.arange(per_tile, device=device)).flatten(-2)
    partial = (nonempty & ~whole)[units].flatten(-2)
    full = whole[units].flatten(-2)
    # 2. older torch infers the key block count from the width of the lists: keep them G * blocks wide
    width = groups * per_tile
    kv_num, kv_idx = _compact(partial, kv, width)
    full_num, full_idx = _compact(full, kv, width) if bool(whole.any()) else (None, None)
    # 3. the query blocks of one tile share its key blocks
    spread = lambda x: None if x is None else x.repeat_interleave(per_tile, dim=2)  # noqa: E731
    extra = {"compute_q_blocks": backward} if _from_kv_blocks_takes_compute_q_blocks() else {}
    return BlockMask.from_kv_blocks(spread(kv_num), spread(kv_idx), spread(full_num), spread(full_idx),
                                    BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(groups * size,) * 2,
                                    **extra)


def flex_tiles(qt: Tensor, kt: Tensor, vt: Tensor, t, units: Tensor | None = None) -> Tensor:
    """FlexAttention over tiled q, k, v (B, heads, groups * size, D) of `attention.Tiling` t.

    Query tile g attends to the key tiles `units[b, h, g]` (B, heads, G, n), or to itself when None.
    """
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (qt, kt, vt))
    block_mask = tile_block_mask(units, t.valid, t.groups, t.size, backward)
    if qt.is_cuda:
        return _compiled_flex()(qt, kt, vt, block_mask=block_mask)
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(qt, kt, vt, block_mask=block_mask)  # unfused reference implementation


# --------------------------------------------------------------------------------------------
# flash-attn (optional)
# --------------------------------------------------------------------------------------------


@functools.cache
def flash_available() -> bool:
    """Whether the optional flash-attn package is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def flash_usable(q: Tensor) -> bool:
    """Whether flash-attn can run these inputs (CUDA, half precision, head dim <= 256)."""
    return flash_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def flash_full(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Full attention through flash-attn (it wants (B, L, heads, D); transposes are views)."""
    from flash_attn import flash_attn_func

    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _varlen(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, order: Tensor | None) -> Tensor:
    """flash-attn varlen over token groups: `order` lists the tokens group by group, `lengths` the group sizes."""
    from flash_attn import flash_attn_varlen_func

    B, n, L, D = q.shape

    def pack(x):  # (B, heads, L, D) -> (B * L, heads, D), tokens group by group
        x = x.transpose(1, 2)
        return (x if order is None else x[:, order]).reshape(B * L, n, D)

    cu_seqlens = F.pad(lengths.repeat(B).cumsum(0), (1, 0)).to(torch.int32)
    longest = int(lengths.max())
    out = flash_attn_varlen_func(pack(q), pack(k), pack(v), cu_seqlens, cu_seqlens, longest, longest)
    out = out.view(B, L, n, D)
    if order is not None:
        out = out[:, torch.argsort(order)]
    return out.transpose(1, 2)


def flash_spans(q: Tensor, k: Tensor, v: Tensor, lengths: list[int]) -> Tensor:
    """Attention within consecutive token spans (temporal units) through flash-attn varlen."""
    return _varlen(q, k, v, torch.tensor(lengths, device=q.device), None)


def flash_groups(q: Tensor, k: Tensor, v: Tensor, ids: Tensor) -> Tensor:
    """Attention among tokens of equal group id (windows) through flash-attn varlen."""
    return _varlen(q, k, v, torch.bincount(ids), torch.argsort(ids, stable=True))
