"""3D self-attention variants of SimpleGVR: full, temporal units, Swin windows and sparse local attention.

Every function takes q, k, v of shape (B, heads, L, D), with L = T*H*W tokens in (t, h, w) raster
order of `grid = (T, H, W)`, and returns q's shape. Each one equals dense softmax attention under
the boolean (query, key) mask that its `*_mask` builder returns; `masked_attention` with that mask
is the reference path. The other paths compute the same function faster:

- "sdpa": `F.scaled_dot_product_attention` on token tiles (any device; the CPU path),
- "triton": hand-written Triton kernels for sparse local attention that read q, k, v in place
  (`attention_triton`; CUDA, the default there),
- "flex": block-sparse FlexAttention, compiled once per shape (CUDA; windows, and sparse local units
  the Triton kernels cannot hold),
- "flash": flash-attn's varlen kernels, only when the optional `flash_attn` package imports.

`attention(q, k, v, grid, kind, ...)` is the entry point the DiT calls; it picks the fastest path
for the device and dtype unless `set_backend` / `use_backend` forces one.

Tiles. All variants except full attention cut the grid into axis-aligned tiles: `unit` frames
(temporal units), `(wt, wh, ww)` boxes (windows) or `(wh, ww)` patches of one frame (sparse local
units). Edge tiles are truncated, never padded with other tokens and never wrapped around. A
shifted tiling moves the boundaries by `w // 2` along an axis, so that its first tile holds
`w // 2` positions and the last one the remainder (paper Fig. 8: 20 latent frames, unit 5 ->
2, 5, 5, 5, 3).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from gvr.errors import ConfigError, InputError

Grid = tuple[int, int, int]

KINDS = ("full", "temporal_unit", "window", "sparse_local")
BACKENDS = ("auto", "reference", "sdpa", "triton", "flex", "flash")
DEFAULT_WINDOW = (1, 8, 8)  # Swin window (wt, wh, ww) in tokens
DEFAULT_UNIT_WINDOW = (9, 12)  # sparse local unit (wh, ww): the paper's "12x9" block

# Backends able to compute each kind; a forced backend outside this set falls back to "auto".
_SUPPORTED = {
    "full": {"reference", "sdpa", "flash"},
    "temporal_unit": {"reference", "sdpa", "flash"},
    "window": {"reference", "sdpa", "flex", "flash"},
    "sparse_local": {"reference", "sdpa", "triton", "flex"},
}
TRITON_MAX_UNIT = 256  # tokens of one sparse-local unit the Triton kernels hold in one tile
_backend = "auto"  # changed only through set_backend / use_backend


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------


def set_backend(name: str) -> None:
    """Force one attention backend for every later call ("auto" restores the automatic choice)."""
    global _backend
    if name not in BACKENDS:
        raise ConfigError(f"attention backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "flash":
        from gvr.models.attention_kernels import flash_available

        if not flash_available():
            raise ConfigError("attention backend 'flash' needs the flash-attn package, which is not installed")
    _backend = name


def get_backend() -> str:
    """The backend set by `set_backend` ("auto" by default)."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of `set_backend`; restores the previous backend on exit."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _choose(kind: str, q: Tensor, tile_tokens: int = 0) -> str:
    """The backend that computes `kind` for these inputs: the forced one if it can, else the fastest.

    `tile_tokens` is the size of one sparse-local unit (the Triton kernels hold one unit per tile).
    """
    if _backend != "auto" and _backend in _SUPPORTED[kind]:
        return _backend
    if not q.is_cuda:
        return "sdpa"
    from gvr.models.attention_kernels import flash_usable, flex_usable, triton_usable

    if kind == "window" and flash_usable(q):
        return "flash"  # packs windows without padding
    if kind == "sparse_local" and triton_usable(q) and tile_tokens <= TRITON_MAX_UNIT:
        return "triton"  # reads tokens in place: no tiling pass, no padding, no mask_mod
    if kind in ("window", "sparse_local") and flex_usable(q):
        return "flex"
    return "sdpa"  # full and temporal units: SDPA's own flash/cuDNN kernels on contiguous spans


# --------------------------------------------------------------------------------------------
# Tiles and masks (the reference definitions)
# --------------------------------------------------------------------------------------------


def _shift_pad(w: int, shift: bool) -> int:
    """Positions virtually prepended to an axis so that its first tile holds `w // 2` real positions."""
    return (w - w // 2) % w if shift else 0


def _axis_tiles(n: int, w: int, shift: bool, device=None) -> Tensor:
    """Tile index of each of the `n` positions of one axis, for tiles of `w` (shifted by `w // 2`)."""
    return (torch.arange(n, device=device) + _shift_pad(w, shift)) // w


def tile_ids(grid: Grid, tile: tuple[int, int, int], shifts: tuple[bool, bool, bool], device=None) -> Tensor:
    """Tile index of every token (L,), tiles numbered in (t, h, w) raster order."""
    it, ih, iw = (_axis_tiles(n, w, s, device) for n, w, s in zip(grid, tile, shifts))
    _, gh, gw = (math.ceil((n + _shift_pad(w, s)) / w) for n, w, s in zip(grid, tile, shifts))
    return ((it[:, None, None] * gh + ih[None, :, None]) * gw + iw[None, None, :]).flatten()


def temporal_unit_ids(grid: Grid, unit: int = 5, shift: bool = False, device=None) -> Tensor:
    """Temporal unit of every token (L,): units of `unit` whole latent frames."""
    T, H, W = grid
    return tile_ids(grid, (unit, H, W), (shift, False, False), device)


def window_ids(grid: Grid, window: tuple[int, int, int] = DEFAULT_WINDOW, shift: bool = False, device=None) -> Tensor:
    """Swin window of every token (L,): `(wt, wh, ww)` boxes, shifted by half a window per axis."""
    return tile_ids(grid, window, (shift, shift, shift), device)


def unit_ids(grid: Grid, window: tuple[int, int] = DEFAULT_UNIT_WINDOW, device=None) -> Tensor:
    """Sparse-local unit of every token (L,): `(wh, ww)` patches of one latent frame."""
    return tile_ids(grid, (1, *window), (False, False, False), device)


def num_units(grid: Grid, window: tuple[int, int] = DEFAULT_UNIT_WINDOW) -> int:
    """How many sparse-local units tile the grid."""
    T, H, W = grid
    return T * math.ceil(H / window[0]) * math.ceil(W / window[1])


def _same_tile_mask(ids: Tensor) -> Tensor:
    return ids[:, None] == ids[None, :]


def temporal_unit_mask(grid: Grid, unit: int = 5, shift: bool = False, device=None) -> Tensor:
    """(L, L) mask: query and key lie in the same temporal unit."""
    return _same_tile_mask(temporal_unit_ids(grid, unit, shift, device))


def window_mask(grid: Grid, window: tuple[int, int, int] = DEFAULT_WINDOW, shift: bool = False, device=None) -> Tensor:
    """(L, L) mask: query and key lie in the same (possibly truncated) window."""
    return _same_tile_mask(window_ids(grid, window, shift, device))


def sparse_local_mask(grid: Grid, window: tuple[int, int], units: Tensor) -> Tensor:
    """(B, heads, L, L) mask: the key's unit is one of `units[b, h, query's unit]`."""
    ids = unit_ids(grid, window, units.device)
    B, n, G, _ = units.shape
    allowed = torch.zeros(B, n, G, G, dtype=torch.bool, device=units.device).scatter_(-1, units, True)
    return allowed[:, :, ids[:, None], ids[None, :]]


def unit_means(x: Tensor, grid: Grid, window: tuple[int, int] = DEFAULT_UNIT_WINDOW) -> Tensor:
    """Mean token of every sparse-local unit: (B, heads, L, D) -> (B, heads, G, D), units in raster order."""
    T, H, W = grid
    B, n = x.shape[:2]
    # a channels-last view of the frames: pooling reads x once, and edge units average only their tokens
    frames = rearrange(x, "b n (t h w) d -> (b n t) d h w", t=T, h=H, w=W)
    pooled = F.avg_pool2d(frames, window, stride=window, ceil_mode=True)  # (B n T, D, gh, gw)
    return rearrange(pooled, "(b n t) d gh gw -> b n (t gh gw) d", b=B, n=n)


@torch.no_grad()
def select_units(q: Tensor, k: Tensor, grid: Grid, window: tuple[int, int] = DEFAULT_UNIT_WINDOW,
                 topk: int = 1) -> Tensor:
    """Units each query unit attends to, per head (B, heads, G, 1 + k): its own first, then its `topk` best others.

    A candidate's score is <mean query of the unit, mean key of the candidate>, computed in the input
    dtype. The selection is a hard, non-differentiable choice (as in MoBA); gradients flow only through
    the attention over the chosen keys. `topk` is capped at G - 1; the chosen units come in no
    particular order.
    """
    return _select_from_means(unit_means(q, grid, window), unit_means(k, grid, window), topk)


def _select_from_means(qm: Tensor, km: Tensor, topk: int) -> Tensor:
    """`select_units` from unit means (B, heads, G, D)."""
    G = qm.shape[-2]
    scores = torch.einsum("bngd,bnkd->bngk", qm, km)  # (B, heads, G, G)
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))  # the own unit is always in, never a candidate
    n_top = min(topk, G - 1)
    # argmax is a plain reduction; topk's radix select costs several times more on a GPU
    top = scores.argmax(-1, keepdim=True) if n_top == 1 else scores.topk(n_top, dim=-1, sorted=False).indices
    own = torch.arange(G, device=qm.device)[:, None].expand(*top.shape[:-1], 1)
    return torch.cat([own, top], dim=-1)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reference: dense softmax(q k^T / sqrt(D)) v, at least in float32, under a mask broadcast to (B, heads, L, L)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bnqd,bnkd->bnqk", q.to(dtype), k.to(dtype)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bnqk,bnkd->bnqd", scores.softmax(dim=-1), v.to(dtype)).to(q.dtype)


# --------------------------------------------------------------------------------------------
# Tiled layout: tokens regrouped tile by tile, every tile zero-padded to the same size
# --------------------------------------------------------------------------------------------


class Tiling(NamedTuple):
    """Where each token sits once the grid is regrouped into `groups` tiles of `size` slots each.

    Per axis, `pads` positions are prepended (the shift), the axis is cut into `counts` tiles of
    `extents` positions (the last one padded at the end), and each tile's (t, h, w) box is flattened
    and padded with empty slots up to `size`.
    """

    grid: Grid
    pads: tuple[int, int, int]
    extents: tuple[int, int, int]
    counts: tuple[int, int, int]
    groups: int
    size: int
    full: bool  # no padding slots: every tile is whole
    pos: Tensor  # (L,) slot of every token in the tiled layout of groups * size slots
    valid: Tensor  # (groups, size) True where a slot holds a token, False for padding


@functools.lru_cache(maxsize=64)
def tiling(grid: Grid, tile: tuple[int, int, int], shifts: tuple[bool, bool, bool],
           device: torch.device, multiple: int = 1) -> Tiling:
    """Tiled layout of a grid; tile sizes are rounded up to `multiple` slots (kernels want 128)."""
    pads = tuple(_shift_pad(w, s) for w, s in zip(tile, shifts))
    counts = tuple(math.ceil((n + p) / w) for n, w, p in zip(grid, tile, pads))
    extents = tuple(min(w, n + p) for n, w, p in zip(grid, tile, pads))  # one tile never needs more
    size = math.ceil(math.prod(extents) / multiple) * multiple
    groups = math.prod(counts)
    st, sh, sw = ((torch.arange(n, device=device) + p) % w for n, w, p in zip(grid, tile, pads))
    _, eh, ew = extents
    slot = ((st[:, None, None] * eh + sh[None, :, None]) * ew + sw[None, None, :]).flatten()
    pos = tile_ids(grid, tile, shifts, device) * size + slot
    valid = torch.zeros(groups * size, dtype=torch.bool, device=device)
    valid[pos] = True
    return Tiling(grid, pads, extents, counts, groups, size, bool(valid.all()), pos, valid.view(groups, size))


def _to_tiles(x: Tensor, t: Tiling) -> Tensor:
    (T, H, W), (pt, ph, pw), (et, eh, ew), (gt, gh, gw) = t.grid, t.pads, t.extents, t.counts
    x = rearrange(x, "b n (t h w) d -> b n t h w d", t=T, h=H, w=W)
    x = F.pad(x, (0, 0, pw, gw * ew - W - pw, ph, gh * eh - H - ph, pt, gt * et - T - pt))
    x = rearrange(x, "b n (gt et) (gh eh) (gw ew) d -> b n (gt gh gw) (et eh ew) d", et=et, eh=eh, ew=ew)
    return F.pad(x, (0, 0, 0, t.size - et * eh * ew)).flatten(2, 3)  # (B, heads, G * size, D)


def _from_tiles(y: Tensor, t: Tiling) -> Tensor:
    (T, H, W), (pt, ph, pw), (et, eh, ew), (_, gh, gw) = t.grid, t.pads, t.extents, t.counts
    y = y.unflatten(2, (t.groups, t.size))[:, :, :, : et * eh * ew]
    y = rearrange(y, "b n (gt gh gw) (et eh ew) d -> b n (gt et) (gh eh) (gw ew) d",
                  gh=gh, gw=gw, et=et, eh=eh, ew=ew)
    return y[:, :, pt: pt + T, ph: ph + H, pw: pw + W].flatten(2, 4)  # (B, heads, L, D)


@functools.cache
def _compiled(fn):
    """`fn` compiled by inductor: pads and reshapes fuse into one pass over memory (CUDA only)."""
    from gvr.models.attention_kernels import allow_recompiles

    allow_recompiles()
    return torch.compile(fn, dynamic=False)


def _tiles_and_sums(x: Tensor, t: Tiling) -> tuple[Tensor, Tensor]:
    tiles = _to_tiles(x, t)
    return tiles, tiles.unflatten(2, (t.groups, t.size)).sum(3, dtype=torch.float32)


def tiles_and_means(x: Tensor, t: Tiling) -> tuple[Tensor, Tensor]:
    """`to_tiles(x)` and the mean token of every tile (B, heads, G, D) in x's dtype, compiled together on CUDA."""
    tiles, sums = (_compiled(_tiles_and_sums) if x.is_cuda else _tiles_and_sums)(x, t)
    return tiles, (sums.detach() / t.valid.sum(-1, keepdim=True)).to(x.dtype)


def to_tiles(x: Tensor, t: Tiling) -> Tensor:
    """(B, heads, L, D) -> (B, heads, groups * size, D), tile by tile, padding slots zero."""
    return (_compiled(_to_tiles) if x.is_cuda else _to_tiles)(x, t)


def from_tiles(y: Tensor, t: Tiling) -> Tensor:
    """Inverse of `to_tiles`: drop the padding slots, back to (B, heads, L, D) in raster order."""
    return (_compiled(_from_tiles) if y.is_cuda else _from_tiles)(y, t)


# --------------------------------------------------------------------------------------------
# SDPA paths (any device)
# --------------------------------------------------------------------------------------------


def _spans_sdpa(q: Tensor, k: Tensor, v: Tensor, lengths: list[int]) -> Tensor:
    """Attention within consecutive token spans of the given lengths: SDPA per span, no copies of q, k, v."""
    spans = zip(q.split(lengths, dim=2), k.split(lengths, dim=2), v.split(lengths, dim=2))
    return torch.cat([F.scaled_dot_product_attention(qs, ks, vs) for qs, ks, vs in spans], dim=2)


def _tiles_sdpa(q: Tensor, k: Tensor, v: Tensor, t: Tiling) -> Tensor:
    """Attention within tiles: SDPA over (B, heads * tiles, size, D), padding keys masked out."""
    B, n = q.shape[:2]
    qt, kt, vt = (rearrange(to_tiles(x, t), "b n (g s) d -> b (n g) s d", g=t.groups) for x in (q, k, v))
    mask = None if t.full else t.valid.repeat(n, 1)[:, None, :]  # (n G, 1, S)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
    return from_tiles(rearrange(out, "b (n g) s d -> b n (g s) d", n=n), t)


def _sparse_local_sdpa(q: Tensor, k: Tensor, v: Tensor, t: Tiling, units: Tensor) -> Tensor:
    """Sparse local attention by gathering each query unit's selected key units next to it, then SDPA."""
    B, n = q.shape[:2]
    qt, kt, vt = (rearrange(to_tiles(x, t), "b n (g s) d -> b n g s d", g=t.groups) for x in (q, k, v))
    b = torch.arange(B, device=q.device)[:, None, None, None]
    h = torch.arange(n, device=q.device)[None, :, None, None]
    keys = rearrange(kt[b, h, units], "b n g u s d -> b (n g) (u s) d")  # own + top-k units per query unit
    values = rearrange(vt[b, h, units], "b n g u s d -> b (n g) (u s) d")
    mask = rearrange(t.valid[units], "b n g u s -> b (n g) 1 (u s)")
    out = F.scaled_dot_product_attention(rearrange(qt, "b n g s d -> b (n g) s d"), keys, values, attn_mask=mask)
    return from_tiles(rearrange(out, "b (n g) s d -> b n (g s) d", n=n), t)


# --------------------------------------------------------------------------------------------
# The four attention variants
# --------------------------------------------------------------------------------------------


def _check(q: Tensor, k: Tensor, v: Tensor, grid: Grid | None = None) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise InputError(f"q, k, v must be (B, heads, L, D) of one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if grid is not None and (len(grid) != 3 or math.prod(grid) != q.shape[2] or min(grid) < 1):
        raise InputError(f"grid {tuple(grid)} does not hold the {q.shape[2]} tokens of q")


def _check_sizes(name: str, sizes, count: int) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != count or min(sizes) < 1:
        raise ConfigError(f"attention {name} must be {count} positive integers, got {sizes}")
    return sizes


def full_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Full self-attention over all tokens of the video."""
    _check(q, k, v)
    backend = _choose("full", q)
    if backend == "reference":
        return masked_attention(q, k, v)
    if backend == "flash":
        from gvr.models.attention_kernels import flash_full

        return flash_full(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def temporal_unit_attention(q: Tensor, k: Tensor, v: Tensor, grid: Grid, unit: int = 5,
                            shift: bool = False) -> Tensor:
    """Attention only within units of `unit` consecutive latent frames (shift: boundaries moved by unit // 2)."""
    _check(q, k, v, grid)
    (unit,) = _check_sizes("unit", (unit,), 1)
    backend = _choose("temporal_unit", q)
    if backend == "reference":
        return masked_attention(q, k, v, temporal_unit_mask(grid, unit, shift, q.device))
    T, H, W = grid
    frames = torch.bincount(_axis_tiles(T, unit, shift)).tolist()  # frames per unit
    if backend == "flash":
        from gvr.models.attention_kernels import flash_spans

        return flash_spans(q, k, v, [f * H * W for f in frames])
    return _spans_sdpa(q, k, v, [f * H * W for f in frames])  # units are contiguous in raster order


def window_attention(q: Tensor, k: Tensor, v: Tensor, grid: Grid,
                     window: tuple[int, int, int] = DEFAULT_WINDOW, shift: bool = False) -> Tensor:
    """Swin-style attention within `(wt, wh, ww)` windows; edge windows truncated; shift by half a window."""
    _check(q, k, v, grid)
    window = _check_sizes("window", window, 3)
    backend = _choose("window", q)
    if backend == "reference":
        return masked_attention(q, k, v, window_mask(grid, window, shift, q.device))
    shifts = (shift, shift, shift)
    if backend == "flash":
        from gvr.models.attention_kernels import flash_groups

        return flash_groups(q, k, v, window_ids(grid, window, shift, q.device))
    if backend == "flex":
        from gvr.models.attention_kernels import flex_multiple, flex_tiles

        t = tiling(grid, window, shifts, q.device, flex_multiple(q.device))
        return from_tiles(flex_tiles(to_tiles(q, t), to_tiles(k, t), to_tiles(v, t), t), t)
    return _tiles_sdpa(q, k, v, tiling(grid, window, shifts, q.device))


def sparse_local_attention(q: Tensor, k: Tensor, v: Tensor, grid: Grid,
                           window: tuple[int, int] = DEFAULT_UNIT_WINDOW, topk: int = 1,
                           rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Each `(wh, ww)` unit of a frame attends to itself plus its `topk` most relevant units of the whole video.

    Relevance is <mean query of the unit, mean key of the other unit>, per head (`select_units`).
    With `rope`, (cos, sin) tables (L, D/2), q and k are first rotated by it (`gvr.models.rope`); the
    Triton backend then takes the unit means from that rotation pass instead of reading q and k once more.
    """
    _check(q, k, v, grid)
    window = _check_sizes("window", window, 2)
    if topk < 0:
        raise ConfigError(f"attention topk must be >= 0, got {topk}")
    backend = _choose("sparse_local", q, window[0] * window[1])
    if rope is not None:
        from gvr.models.rope import check_table, rotate

        check_table(q, rope)
        if backend == "triton":
            from gvr.models import attention_triton

            return attention_triton.rope_sparse_local(q, k, v, rope, grid, window, topk)
        q, k = rotate(q, k, rope)
    if backend == "flex":
        return _sparse_local_flex(q, k, v, grid, window, topk)
    if backend == "triton":
        from gvr.models import attention_triton

        with torch.no_grad():
            units = attention_triton.select_units(q, k, grid, window, topk)
        return attention_triton.sparse_local(q, k, v, grid, window, units)
    return _sparse_local_with_units(q, k, v, grid, window, select_units(q, k, grid, window, topk), backend)


def _sparse_local_flex(q: Tensor, k: Tensor, v: Tensor, grid: Grid, window: tuple[int, int], topk: int,
                       units: Tensor | None = None) -> Tensor:
    """FlexAttention path; the unit means for the selection come from the tiling pass over q and k.

    Those means are summed in another order than `unit_means`, so where two candidates tie to
    rounding this path may pick the other one.
    """
    from gvr.models.attention_kernels import flex_multiple, flex_tiles

    t = tiling(grid, (1, *window), (False, False, False), q.device, flex_multiple(q.device))
    (qt, qm), (kt, km) = tiles_and_means(q, t), tiles_and_means(k, t)
    if units is None:
        with torch.no_grad():
            units = _select_from_means(qm, km, topk)
    return from_tiles(flex_tiles(qt, kt, to_tiles(v, t), t, units), t)


def _sparse_local_with_units(q: Tensor, k: Tensor, v: Tensor, grid: Grid, window: tuple[int, int],
                             units: Tensor, backend: str) -> Tensor:
    """Sparse local attention for a given selection `units` (B, heads, G, 1+k), on one backend."""
    if backend == "reference":
        return masked_attention(q, k, v, sparse_local_mask(grid, window, units))
    if backend == "flex":
        return _sparse_local_flex(q, k, v, grid, window, units.shape[-1] - 1, units)
    if backend == "triton":
        from gvr.models import attention_triton

        return attention_triton.sparse_local(q, k, v, grid, window, units)
    return _sparse_local_sdpa(q, k, v, tiling(grid, (1, *window), (False, False, False), q.device), units)


def attention(q: Tensor, k: Tensor, v: Tensor, grid: Grid, kind: str, *, shift: bool = False, unit: int = 5,
              window: tuple[int, ...] | None = None, topk: int = 1,
              rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Self-attention of one DiT layer over a (T, H, W) token grid, of the given kind.

    Args:
        q, k, v: (B, heads, L, D), L = T*H*W tokens in (t, h, w) raster order.
        grid: (T, H, W) of the patchified latent.
        kind: "full", "temporal_unit", "window" or "sparse_local".
        shift: shifted units/windows (alternate layers); full and sparse local attention have none.
        unit: latent frames per temporal unit.
        window: (wt, wh, ww) for "window" (default (1, 8, 8)), (wh, ww) for "sparse_local" (default (9, 12)).
        topk: extra units each sparse-local unit attends to.
        rope: (cos, sin) tables (L, D/2) to rotate q and k by first (`gvr.models.rope`). On the Triton
            backend, sparse local attention takes its unit means from that rotation pass
            (`attention_triton.rope_sparse_local`) instead of reading q and k once more.
    Returns:
        (B, heads, L, D) attention output.
    """
    if kind not in KINDS:
        raise ConfigError(f"attention kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "sparse_local":
        return sparse_local_attention(q, k, v, grid, window or DEFAULT_UNIT_WINDOW, topk, rope=rope)
    if rope is not None:
        from gvr.models.rope import rotate

        q, k = rotate(q, k, rope)
    if kind == "full":
        return full_attention(q, k, v)
    if kind == "temporal_unit":
        return temporal_unit_attention(q, k, v, grid, unit, shift)
    return window_attention(q, k, v, grid, window or DEFAULT_WINDOW, shift)
