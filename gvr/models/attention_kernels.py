"""GPU fast paths for `gvr.models.attention`: block-sparse FlexAttention and optional flash-attn varlen.

(Sparse local attention has its own Triton kernels in `attention_triton`; `triton_usable` here says
whether they can run, without importing Triton.)

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
import math

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


def triton_usable(q: Tensor) -> bool:
    """Whether `attention_triton`'s sparse local kernels can run: CUDA, fp16/bf16/fp32, head dim 16..128.

    (Units of more than 256 tokens are refused there, with a clear error.)
    """
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and 16 <= q.shape[-1] <= 128 and importlib.util.find_spec("triton") is not None)


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


def _compact(flags: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: how many flags are set, and `index` with the flagged entries first."""
    order = torch.argsort((~flags).to(torch.int8), dim=-1, stable=True)
    return flags.sum(-1, dtype=torch.int32), index.gather(-1, order).to(torch.int32)


def _transpose_lists(num: Tensor, idx: Tensor, n_cols: int) -> tuple[Tensor, Tensor]:
    """Row-wise block lists -> column-wise ones: for every key block, the query blocks that read it, ascending.

    `num` (..., rows) and `idx` (..., rows, n) hold each row's first `num` columns. Sorting the few
    listed (row, column) pairs replaces torch's transpose through a dense (rows, columns) matrix.
    """
    *batch, rows, width = idx.shape
    n_batch, device = math.prod(batch), idx.device
    num, idx = num.reshape(n_batch, rows), idx.reshape(n_batch, rows, width).long()
    live = torch.arange(width, device=device) < num[..., None]  # (batch, rows, n)
    batch_of = torch.arange(n_batch, device=device)[:, None, None]
    key = torch.where(live, batch_of * n_cols + idx, n_batch * n_cols).flatten()  # dead pairs sort last
    row = torch.arange(rows, device=device)[None, :, None].expand_as(idx).flatten()
    order = torch.argsort(key * rows + row)
    key, row = key[order], row[order]
    counts = torch.zeros(n_batch * n_cols + 1, dtype=torch.long, device=device)
    counts.scatter_add_(0, key, torch.ones_like(key))  # bincount would wait for the GPU to size its output
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(key.numel(), device=device) - starts[key]
    # older torch sizes these lists as dense rows (rows wide); one spare slot takes the dead pairs
    out = torch.zeros(n_batch * n_cols * rows + 1, dtype=torch.int32, device=device)
    out[torch.where(key < n_batch * n_cols, key * rows + rank, out.numel() - 1)] = row.to(torch.int32)
    q_num = counts[:-1].to(torch.int32).view(*batch, n_cols)
    return q_num, out[:-1].view(*batch, n_cols, rows)


@functools.lru_cache(maxsize=64)
def _tile_blocks(valid: Tensor, groups: int, size: int) -> tuple[int, int, Tensor, Tensor, bool]:
    """Kernel blocks of a tiling: per tile, which hold a token and which hold only tokens; any whole one."""
    per_tile = size // FLEX_BLOCK if size % FLEX_BLOCK == 0 else 1
    slots = valid.view(groups, per_tile, size // per_tile)
    nonempty, whole = slots.any(-1), slots.all(-1)  # (G, blocks per tile)
    return per_tile, size // per_tile, nonempty, whole, bool(whole.any())


def tile_block_mask(units: Tensor | None, valid: Tensor, groups: int, size: int, backward: bool):
    """BlockMask over tiled tokens where query tile g reads key tiles `units[b, h, g]`, or only itself if None.

    `valid` (groups, size) marks real token slots. A tile of `size` slots spans size / FLEX_BLOCK kernel
    blocks (one block of `size` on CPU); key blocks holding only padding are skipped, and blocks with no
    padding are listed as full, so the kernel skips `mask_mod` there. The q-side lists, which only the
    backward pass reads, are built only when `backward` is set.

    `mask_mod` states the whole rule (slot holds a token, key tile allowed), so that unfused FlexAttention,
    which reads no block lists, is right too; it compares the key tile with the query tile's few allowed
    tiles, loaded once per query row rather than gathered per score.
    """
    from torch.nn.attention.flex_attention import BlockMask

    device = valid.device
    flat_valid = valid.flatten()
    per_tile, block, nonempty, whole, any_whole = _tile_blocks(valid, groups, size)  # cached: no GPU sync
    n_blocks = groups * per_tile
    if units is None:
        units = torch.arange(groups, device=device)[None, None, :, None]

        def mask_mod(b, h, q_idx, kv_idx):
            return flat_valid[kv_idx] & (q_idx // size == kv_idx // size)
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            q_tile, kv_tile = q_idx // size, kv_idx // size
            seen = units[b, h, q_tile, 0] == kv_tile
            for j in range(1, units.shape[-1]):
                seen = seen | (units[b, h, q_tile, j] == kv_tile)
            return flat_valid[kv_idx] & seen

    # 1. key blocks of every allowed tile, per query tile: (B, heads, G, units * blocks per tile)
    kv = (units[..., None] * per_tile + torch.arange(per_tile, device=device)).flatten(-2)
    lists = {"": _compact((nonempty & ~whole)[units].flatten(-2), kv)}
    if any_whole:
        lists["full_"] = _compact(whole[units].flatten(-2), kv)
    # 2. the query blocks of one tile share its key blocks; older torch infers the number of key
    #    blocks from the width of the lists, so they are padded to all n_blocks
    lists = {name: (num.repeat_interleave(per_tile, dim=2), idx.repeat_interleave(per_tile, dim=2))
             for name, (num, idx) in lists.items()}
    wide = {f"{name}kv_{part}": F.pad(x, (0, n_blocks - x.shape[-1])) if part == "indices" else x
            for name, (num, idx) in lists.items() for part, x in (("num_blocks", num), ("indices", idx))}
    skip_q = _from_kv_blocks_takes_compute_q_blocks()
    extra = {"compute_q_blocks": False} if skip_q else {}
    mask = BlockMask.from_kv_blocks(**wide, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(groups * size,) * 2,
                                    **extra)
    # 3. q-side lists for the backward pass, from the few listed pairs
    if backward and skip_q:
        for name, (num, idx) in lists.items():
            q_num, q_idx = _transpose_lists(num, idx, n_blocks)
            setattr(mask, f"{name}q_num_blocks", q_num)
            setattr(mask, f"{name}q_indices", q_idx)
    return mask


def _kernel_options(head_dim: int) -> dict | None:
    """Forward tiles of 64 x 64: on an H200 with torch 2.11 the default tiles ran up to 40x slower at head dim 64
    (sparse local, 20x68x120 tokens) and these were the fastest or within 10% at head dims 64 and 128."""
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3} if head_dim <= 128 else None


def flex_tiles(qt: Tensor, kt: Tensor, vt: Tensor, t, units: Tensor | None = None) -> Tensor:
    """FlexAttention over tiled q, k, v (B, heads, groups * size, D) of `attention.Tiling` t.

    Query tile g attends to the key tiles `units[b, h, g]` (B, heads, G, n), or to itself when None.
    """
    backward = torch.is_grad_enabled() and any(x.requires_grad for x in (qt, kt, vt))
    block_mask = tile_block_mask(units, t.valid, t.groups, t.size, backward)
    if qt.is_cuda:
        return _compiled_flex()(qt, kt, vt, block_mask=block_mask, kernel_options=_kernel_options(qt.shape[-1]))
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
