"""Sparse local attention as hand-written Triton kernels that read q, k, v where they lie.

The FlexAttention path (`attention_kernels`) first copies q, k, v into a tiled layout, pads every
108-token unit to a 128-token kernel block and re-applies the unit rule per score through `mask_mod`.
These kernels skip all three: a program owns one (query unit, batch, head); it computes the (t, h, w)
positions of its unit's tokens from the grid, loads them straight from the raster-ordered tensors
(any strides, head dim contiguous), and loops over the selected key units, loading each one the same
way. Which slots hold a token follows from the geometry (edge units are truncated), so the only mask
is a bounds check, and padding slots are never read from or written to memory.

- `select_units`: the mean query and key of every unit in one pass over q and k, then one argmax
  pass per chosen unit over float32 scores (the (G, G) score matrix is never written);
- forward: online softmax over the selected units (flash-attention style), each key unit in blocks
  of BLOCK_N slots whose loads Triton software-pipelines; when a gradient is wanted it saves the
  rows' log-sum-exp for the backward;
- inference on Hopper GPUs: the same forward, warp-specialised in Gluon (`attention_gluon`), where
  `inference_forward` finds it supported;
- backward: one kernel per query unit for dq (and the rows' `sum(o * do)`), one per key unit for dk
  and dv, which loops over the query units that selected it (a CSR list built by one sort), so no
  atomics and the result is deterministic. The forward's log-sum-exp and that row sum are kept in
  unit-slot order, (B, heads, G * BLOCK), so the backward reads a unit's rows as one contiguous run;
- RoPE (`rope`, `rope_with_means`): the DiT's rotation of q and k in one pass, and, tiled by units
  for sparse local attention, with every unit's mean rotated query and key as a by-product, so that
  `rope_sparse_local` selects without a pass of its own over q and k.

A row of `units` must start with the query unit itself and hold distinct units, as
`attention.select_units` and `select_units` here make it. Triton is a dependency of torch's CUDA
builds; on CPU the kernels run under Triton's interpreter (`TRITON_INTERPRET=1`, set before triton
is imported), which is how the tests check them without a GPU. Launch settings: `Geometry.launch`;
measurements: benchmarks/README.md, Attention.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from gvr.errors import ConfigError, InputError
from gvr.models import attention_gluon

LOG2E = 1.4426950408889634
HOPPER_SMEM = 228 * 1024  # shared memory of an H100/H200 multiprocessor; 1 KiB of it is reserved per program


def _pow2(n: int, least: int = 1) -> int:
    """The smallest power of two >= n and >= least (Triton tiles are powers of two; tl.dot wants >= 16)."""
    return max(least, 1 << (n - 1).bit_length())


class Geometry:
    """Sizes the kernels need: the token grid, the unit window, the number of units and the tile widths."""

    def __init__(self, grid: tuple[int, int, int], window: tuple[int, int], head_dim: int):
        self.T, self.H, self.W = grid
        self.WH, self.WW = window
        self.GH, self.GW = math.ceil(self.H / self.WH), math.ceil(self.W / self.WW)
        self.G = self.T * self.GH * self.GW
        self.D = head_dim
        self.BLOCK = _pow2(self.WH * self.WW, 16)
        self.BLOCK_D = _pow2(head_dim, 16)

    def constants(self, *tensors: Tensor) -> dict:
        """The compile-time arguments shared by every kernel.

        The grid's sizes are among them, so that dividing a unit index into frame, row and column is a
        multiply and a shift rather than a run-time integer division (one compile per grid shape; a model
        sees a handful). FULL_WIDTH: W is a multiple of WW, so no unit is cut on the right and a unit's
        tokens fill the first rows * WW of its slots. I64: a token offset into one of the (B, heads, L, D)
        `tensors` it reads or writes could pass 2**31 (int32 otherwise)."""
        i64 = self.T * self.H * self.W * max(x.stride(2) for x in tensors) >= 2**31
        return {"G": self.G, "H": self.H, "W": self.W, "GH": self.GH, "GW": self.GW, "WH": self.WH,
                "WW": self.WW, "BLOCK": self.BLOCK, "D": self.D, "BLOCK_D": self.BLOCK_D,
                "FULL_WIDTH": self.W % self.WW == 0, "I64": i64}

    def launch(self, kernel: str, itemsize: int = 2, smem: int = HOPPER_SMEM) -> dict:
        """Meta-parameters of the "forward", "backward", "means" or "rope" kernels, as measured fastest on an H200
        (benchmarks/attention_triton_tune.py): key blocks of BLOCK_N slots, warps, pipeline stages, and a
        register cap (`maxnreg`): uncapped, the forward takes up to 255 registers a thread, which leaves
        room for only two programs per multiprocessor, too few to hide its load and exponential latencies;
        capped too low, it spills in its loop.

        The forward takes three pipeline stages where the query tile and three stages of key and value
        blocks (of `itemsize`-byte elements) still let two programs share a multiprocessor with `smem` bytes
        of shared memory (an H100's or H200's at head dim 64 in 16-bit types: 112 KiB each): at top-1 the
        prologue then issues both key blocks' loads before the first product. Otherwise two: a third stage
        that leaves one program per multiprocessor costs more than it hides, and on GPUs with less shared
        memory (A100, L40S) it may not fit at all."""
        wide = self.BLOCK * self.BLOCK_D > 128 * 64
        if kernel == "forward":  # top-1 at inference: 1.02 ms at 24x64 (2 stages 1.09), 1.09 at 12x128 (3 stages 1.40)
            block_n = min(self.BLOCK, 64 if wide else 128)
            tile = self.BLOCK_D * itemsize
            stages = 3 if 2 * (self.BLOCK * tile + 3 * 2 * block_n * tile + 1024) <= smem else 2
            return {"BLOCK_M": self.BLOCK, "BLOCK_N": block_n, "num_warps": 8, "num_stages": stages, "maxnreg": 128}
        if kernel == "means":  # 1 warp: 0.242 ms for q and k at 24x64 (4.2 TB/s), 2 warps 0.255
            return {"num_warps": 1 if self.BLOCK * self.BLOCK_D <= 128 * 128 else 4}
        if kernel == "rope":  # with the means, 24x64: 0.58 ms (2 warps 0.61, 8 warps 0.69)
            return {"num_warps": 4}
        return {"num_warps": 8, "num_stages": 1}  # 5.1 ms vs 8.4 at 4 warps; 2 stages: same at 24x64, slower at 12x128


@triton.jit
def unit_origin(g, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr, WH: tl.constexpr,
                WW: tl.constexpr):
    """Raster index of unit g's first token, and its numbers of token rows and columns (edge units are cut).
    g may be a vector of units."""
    t = g // (GH * GW)
    r = g - t * (GH * GW)
    uh = r // GW
    uw = r - uh * GW
    return (t * H + uh * WH) * W + uw * WW, tl.minimum(H - uh * WH, WH), tl.minimum(W - uw * WW, WW)


@triton.jit
def unit_slots(origin, rows, cols, START, SIZE: tl.constexpr, W: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr,
               FULL_WIDTH: tl.constexpr, I64: tl.constexpr):
    """Raster index of slots START..START+SIZE of the unit at `origin` with `rows` x `cols` tokens, and
    whether each holds a token: slot i is (row i // WW, column i % WW). With FULL_WIDTH the tokens are the
    first rows * WW slots, so one comparison decides; otherwise the column is checked too.

    The index is int32, whose address arithmetic costs about half the instructions of int64, unless I64:
    some token's offset (index * row stride) would pass 2**31."""
    slot = START + tl.arange(0, SIZE)
    valid = (slot < WH * WW) & (slot < rows * WW)  # the first is known when compiling: no loads for padding
    if not FULL_WIDTH:
        valid = valid & (slot % WW < cols)
    tok = origin + (slot // WW) * W + slot % WW
    if I64:
        tok = tok.to(tl.int64)
    return tok, valid


@triton.jit
def unit_tokens(g, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr, WH: tl.constexpr,
                WW: tl.constexpr, START, SIZE: tl.constexpr, FULL_WIDTH: tl.constexpr, I64: tl.constexpr):
    """`unit_slots` of unit g."""
    origin, rows, cols = unit_origin(g, H, W, GH, GW, WH, WW)
    return unit_slots(origin, rows, cols, START, SIZE, W, WH, WW, FULL_WIDTH, I64)


@triton.jit
def pick(values, j, SIZE: tl.constexpr):
    """values[j] of a small vector held in registers."""
    return tl.sum(tl.where(tl.arange(0, SIZE) == j, values, 0))


@triton.jit
def selected_units(UNITS, bh, g, G: tl.constexpr, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr,
                   GW: tl.constexpr, N_SEL: tl.constexpr, SEL_P2: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr):
    """`unit_origin` of every unit that query unit g selected, worked out once per program (vectors of SEL_P2)."""
    sel = tl.load(UNITS + (bh * G + g) * N_SEL + tl.arange(0, SEL_P2), mask=tl.arange(0, SEL_P2) < N_SEL, other=0)
    return unit_origin(sel, H, W, GH, GW, WH, WW)


@triton.jit
def selected_slots(origin, rows, cols, j, START, SIZE: tl.constexpr, SEL_P2: tl.constexpr, W: tl.constexpr,
                   WH: tl.constexpr, WW: tl.constexpr, FULL_WIDTH: tl.constexpr, I64: tl.constexpr):
    """`unit_slots` of the j-th selected unit, from `selected_units`."""
    return unit_slots(pick(origin, j, SEL_P2), pick(rows, j, SEL_P2), pick(cols, j, SEL_P2), START, SIZE, W, WH, WW,
                      FULL_WIDTH, I64)


@triton.jit
def key_mask(valid_k):
    """Additive score bias of a key block: 0 where a slot holds a token, -inf elsewhere."""
    return tl.where(valid_k, 0.0, float("-inf"))[None, :]


@triton.jit
def batch_head():
    """The program's head (grid axis 1) and batch (axis 2), and their joint index b * heads + h."""
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    return b * tl.num_programs(1) + h, b, h


@triton.jit
def tile_mask(valid, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a (tokens, BLOCK_D) tile: the token slots, and the head dim where it is not a power of two."""
    if D == BLOCK_D:
        mask = valid[:, None]
    else:
        mask = valid[:, None] & (tl.arange(0, BLOCK_D) < D)[None, :]
    return mask


@triton.jit
def load_rows(X, tok, valid, stride_l, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """(tokens, BLOCK_D) tile of the tokens `tok`; zeros where there is no token."""
    ptrs = X + tok[:, None] * stride_l + tl.arange(0, BLOCK_D)[None, :]
    return tl.load(ptrs, mask=tile_mask(valid, D, BLOCK_D), other=0.0)


@triton.jit
def store_rows(X, tok, valid, stride_l, value, D: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs = X + tok[:, None] * stride_l + tl.arange(0, BLOCK_D)[None, :]
    tl.store(ptrs, value.to(X.dtype.element_ty), mask=tile_mask(valid, D, BLOCK_D))


@triton.jit
def forward(Q, K, V, Out, LSE, UNITS,
            sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol, qk_scale,
            G: tl.constexpr, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr,
            N_SEL: tl.constexpr, SEL_P2: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, D: tl.constexpr,
            BLOCK_D: tl.constexpr, FULL_WIDTH: tl.constexpr, I64: tl.constexpr, PRECISION: tl.constexpr,
            STORE_LSE: tl.constexpr):
    """One program: BLOCK_M query slots of a unit. Key blocks are (selected unit, BLOCK_N slots of it); Triton
    pipelines their loads over `num_stages` shared-memory buffers. With STORE_LSE it also stores the rows'
    log-sum-exp (log2) in unit-slot order, +inf where a slot holds no token.

    The work outside the loop costs about as many instructions as one key block, so it is kept small too:
    - the grid's sizes are compile-time constants, so dividing a unit index is a multiply and a shift;
    - where each selected unit starts and how many rows and columns it has are worked out once, before the
      loop (`unit_slots`); the mask enters as an additive bias fused with the scale (one FFMA a score);
    - the output is scaled by one reciprocal per row, not divided per element;
    - without STORE_LSE (inference) the log-sum-exp, its log2 and its store are left out."""
    g = tl.program_id(0) // (BLOCK // BLOCK_M)
    part = tl.program_id(0) % (BLOCK // BLOCK_M)
    bh, b, h = batch_head()
    K += b * skb + h * skh
    V += b * svb + h * svh
    origin, rows, cols = selected_units(UNITS, bh, g, G, H, W, GH, GW, N_SEL, SEL_P2, WH, WW)
    tok_q, valid_q = unit_tokens(g, H, W, GH, GW, WH, WW, part * BLOCK_M, BLOCK_M, FULL_WIDTH, I64)
    q = load_rows(Q + b * sqb + h * sqh, tok_q, valid_q, sql, D, BLOCK_D)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for blk in range(N_SEL * SPLIT):
        j = blk // SPLIT
        tok_k, valid_k = selected_slots(origin, rows, cols, j, (blk % SPLIT) * BLOCK_N, BLOCK_N, SEL_P2, W, WH, WW,
                                        FULL_WIDTH, I64)
        k = load_rows(K, tok_k, valid_k, skl, D, BLOCK_D)
        v = load_rows(V, tok_k, valid_k, svl, D, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 domain
        s += key_mask(valid_k)
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.math.exp2(m - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        denom = denom * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m = m_new
    store_rows(Out + b * sob + h * soh, tok_q, valid_q, sol, acc * (1.0 / denom)[:, None], D, BLOCK_D)
    if STORE_LSE:  # for the backward
        rows_lse = LSE + (bh * G + g) * BLOCK + part * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(rows_lse, tl.where(valid_q, m + tl.math.log2(denom), float("inf")))


@triton.jit
def backward_dq(Q, K, V, Out, DO, DQ, LSE, DELTA, UNITS,
                sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol, sdob, sdoh, sdol, qk_scale, sm_scale,
                G: tl.constexpr, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr,
                N_SEL: tl.constexpr, SEL_P2: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr,
                D: tl.constexpr, BLOCK_D: tl.constexpr, FULL_WIDTH: tl.constexpr, I64: tl.constexpr,
                PRECISION: tl.constexpr):
    """dq of one query unit over its selected units; also stores its rows' delta = sum(o * do) in unit-slot
    order (0 where a slot holds no token)."""
    g = tl.program_id(0)
    bh, b, h = batch_head()
    K += b * skb + h * skh
    V += b * svb + h * svh
    origin, rows, cols = selected_units(UNITS, bh, g, G, H, W, GH, GW, N_SEL, SEL_P2, WH, WW)
    tok_q, valid_q = unit_tokens(g, H, W, GH, GW, WH, WW, 0, BLOCK, FULL_WIDTH, I64)
    q = load_rows(Q + b * sqb + h * sqh, tok_q, valid_q, sql, D, BLOCK_D)
    do = load_rows(DO + b * sdob + h * sdoh, tok_q, valid_q, sdol, D, BLOCK_D)
    o = load_rows(Out + b * sob + h * soh, tok_q, valid_q, sol, D, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    slots = (bh * G + g) * BLOCK + tl.arange(0, BLOCK)
    tl.store(DELTA + slots, delta)
    lse = tl.load(LSE + slots)
    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for j in range(N_SEL):
        tok_k, valid_k = selected_slots(origin, rows, cols, j, 0, BLOCK, SEL_P2, W, WH, WW, FULL_WIDTH, I64)
        k = load_rows(K, tok_k, valid_k, skl, D, BLOCK_D)
        v = load_rows(V, tok_k, valid_k, svl, D, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s += key_mask(valid_k)
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    store_rows(DQ + b * sqb + h * sqh, tok_q, valid_q, sql, dq * sm_scale, D, BLOCK_D)


@triton.jit
def backward_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, READERS, STARTS, COUNTS,
                  sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sdob, sdoh, sdol, qk_scale, sm_scale,
                  G: tl.constexpr, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr,
                  WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr,
                  BLOCK_D: tl.constexpr, FULL_WIDTH: tl.constexpr, I64: tl.constexpr, PRECISION: tl.constexpr):
    """dk and dv of one key unit, summed over the query units that selected it (the READERS list).

    Key slots that hold no token are not masked: their k and v load as zeros, and row i of dk and dv depends
    on row i of the scores alone, so whatever those rows hold is never stored."""
    u = tl.program_id(0)
    bh, b, h = batch_head()
    Q += b * sqb + h * sqh
    DO += b * sdob + h * sdoh
    tok_k, valid_k = unit_tokens(u, H, W, GH, GW, WH, WW, 0, BLOCK, FULL_WIDTH, I64)
    k = load_rows(K + b * skb + h * skh, tok_k, valid_k, skl, D, BLOCK_D)
    v = load_rows(V + b * svb + h * svh, tok_k, valid_k, svl, D, BLOCK_D)
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    start = tl.load(STARTS + bh * G + u)
    for i in range(tl.load(COUNTS + bh * G + u)):
        reader = tl.load(READERS + start + i)
        tok_q, valid_q = unit_tokens(reader, H, W, GH, GW, WH, WW, 0, BLOCK, FULL_WIDTH, I64)
        q = load_rows(Q, tok_q, valid_q, sql, D, BLOCK_D)
        do = load_rows(DO, tok_q, valid_q, sdol, D, BLOCK_D)
        slots = (bh * G + reader) * BLOCK + tl.arange(0, BLOCK)
        lse = tl.load(LSE + slots)  # +inf where no token: those columns of pt are 0
        delta = tl.load(DELTA + slots)
        pt = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dst = pt * (tl.dot(v, tl.trans(do), input_precision=PRECISION) - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    store_rows(DK + b * skb + h * skh, tok_k, valid_k, skl, dk * sm_scale, D, BLOCK_D)
    store_rows(DV + b * svb + h * svh, tok_k, valid_k, svl, dv, D, BLOCK_D)


@triton.jit
def means(Q, K, QM, KM, sqb, sqh, sql, skb, skh, skl,
          G: tl.constexpr, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr,
          WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
          FULL_WIDTH: tl.constexpr, I64: tl.constexpr):
    """Mean query and mean key of one unit, summed in float32."""
    g = tl.program_id(0)
    bh, b, h = batch_head()
    tok, valid = unit_tokens(g, H, W, GH, GW, WH, WW, 0, BLOCK, FULL_WIDTH, I64)
    q = load_rows(Q + b * sqb + h * sqh, tok, valid, sql, D, BLOCK_D).to(tl.float32)
    k = load_rows(K + b * skb + h * skh, tok, valid, skl, D, BLOCK_D).to(tl.float32)
    count = tl.sum(valid.to(tl.float32), 0)
    d = tl.arange(0, BLOCK_D)
    tl.store(QM + (bh * G + g) * D + d, (tl.sum(q, 0) / count).to(QM.dtype.element_ty), mask=d < D)
    tl.store(KM + (bh * G + g) * D + d, (tl.sum(k, 0) / count).to(KM.dtype.element_ty), mask=d < D)


@triton.jit
def head_item_batch():
    """(b * heads + h, b, h, item) of a RoPE program. Their grid is (heads, items, batch): the heads of one item
    run side by side and read its tokens' cos and sin from L2 (item-major, each head streams the whole table
    from memory again: 0.69 ms instead of 0.52 ms for q and k at 20x68x120, 24x64, on an H200)."""
    h = tl.program_id(0).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    return b * tl.num_programs(0) + h, b, h, tl.program_id(1)


@triton.jit
def load_angles(COS, SIN, tok, valid, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """cos and sin (tokens, BLOCK_D // 2) of the tokens `tok` from (L, D / 2) tables; zeros where there is none."""
    j = tl.arange(0, BLOCK_D // 2)
    mask = valid[:, None] & (j < D // 2)[None, :]
    offsets = tok[:, None] * (D // 2) + j[None, :]
    return tl.load(COS + offsets, mask=mask, other=0.0), tl.load(SIN + offsets, mask=mask, other=0.0)


@triton.jit
def rotate_tile(x, cos, sin, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, INVERSE: tl.constexpr):
    """RoPE of a (ROWS, BLOCK_D) tile in float32: channels (2i, 2i + 1) turn by the angle of column i of cos
    and sin (ROWS, BLOCK_D // 2); INVERSE turns them back (the backward)."""
    x1, x2 = tl.split(tl.reshape(x.to(tl.float32), [ROWS, BLOCK_D // 2, 2]))
    if INVERSE:
        sin = -sin
    return tl.reshape(tl.join(x1 * cos - x2 * sin, x1 * sin + x2 * cos), [ROWS, BLOCK_D])


@triton.jit
def rope_tokens(Q, K, QR, KR, COS, SIN, sqb, sqh, sql, skb, skh, skl, sab, sah, sal, sbb, sbh, sbl, L,
                BLOCK_L: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, I64: tl.constexpr,
                INVERSE: tl.constexpr):
    """RoPE of BLOCK_L consecutive tokens of q and of k (one batch and head): QR, KR = rotated Q, K."""
    _, b, h, blk = head_item_batch()
    tok = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    valid = tok < L
    if I64:
        tok = tok.to(tl.int64)
    cos, sin = load_angles(COS, SIN, tok, valid, D, BLOCK_D)
    q = load_rows(Q + b * sqb + h * sqh, tok, valid, sql, D, BLOCK_D)
    store_rows(QR + b * sab + h * sah, tok, valid, sal, rotate_tile(q, cos, sin, BLOCK_L, BLOCK_D, INVERSE), D, BLOCK_D)
    k = load_rows(K + b * skb + h * skh, tok, valid, skl, D, BLOCK_D)
    store_rows(KR + b * sbb + h * sbh, tok, valid, sbl, rotate_tile(k, cos, sin, BLOCK_L, BLOCK_D, INVERSE), D, BLOCK_D)


@triton.jit
def rotate_unit(X, Y, M, tok, valid, count, sx, sy, cos, sin, BLOCK: tl.constexpr, D: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """Rotate one unit's tokens of X into Y and store their mean as Y holds them (rounded to its dtype)."""
    x = load_rows(X, tok, valid, sx, D, BLOCK_D)
    y = rotate_tile(x, cos, sin, BLOCK, BLOCK_D, False).to(Y.dtype.element_ty)
    store_rows(Y, tok, valid, sy, y, D, BLOCK_D)
    d = tl.arange(0, BLOCK_D)
    tl.store(M + d, (tl.sum(y.to(tl.float32), 0) / count).to(M.dtype.element_ty), mask=d < D)


@triton.jit
def rope_units(Q, K, QR, KR, QM, KM, COS, SIN, sqb, sqh, sql, skb, skh, skl, sab, sah, sal, sbb, sbh, sbl,
               G: tl.constexpr, H: tl.constexpr, W: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr,
               WH: tl.constexpr, WW: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
               FULL_WIDTH: tl.constexpr, I64: tl.constexpr):
    """RoPE of one unit's queries and keys, tiled like `means`, with the unit's mean rotated query and key as
    a by-product: the selection then needs no pass of its own over q and k."""
    bh, b, h, g = head_item_batch()
    tok, valid = unit_tokens(g, H, W, GH, GW, WH, WW, 0, BLOCK, FULL_WIDTH, I64)
    cos, sin = load_angles(COS, SIN, tok, valid, D, BLOCK_D)
    count = tl.sum(valid.to(tl.float32), 0)
    rotate_unit(Q + b * sqb + h * sqh, QR + b * sab + h * sah, QM + (bh * G + g) * D, tok, valid, count, sql, sal,
                cos, sin, BLOCK, D, BLOCK_D)
    rotate_unit(K + b * skb + h * skh, KR + b * sbb + h * sbh, KM + (bh * G + g) * D, tok, valid, count, skl, sbl,
                cos, sin, BLOCK, D, BLOCK_D)


@triton.jit
def best_unit(QM, KM, UNITS, G, N_SEL, J, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """Column J of the selection for BLOCK_G query units: the best unit by <mean q, mean k> in float32, among
    those not yet chosen (the own unit in column 0, columns 1..J-1). Of tied candidates the lowest index wins."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    qm = tl.load(QM + (bh * G + rows)[:, None] * D + d[None, :], mask=(rows < G)[:, None] & (d < D)[None, :],
                 other=0.0)
    out = UNITS + (bh * G + rows) * N_SEL
    best = tl.full([BLOCK_G], float("-inf"), tl.float32)
    best_at = tl.zeros([BLOCK_G], tl.int32)
    for start in range(0, G, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        km = tl.load(KM + (bh * G + cols)[:, None] * D + d[None, :], mask=(cols < G)[:, None] & (d < D)[None, :],
                     other=0.0)
        s = tl.dot(qm, tl.trans(km), input_precision="ieee" if QM.dtype.element_ty == tl.float32 else "tf32")
        s = tl.where((cols < G)[None, :] & (cols[None, :] != rows[:, None]), s, float("-inf"))
        for i in range(1, J):
            chosen = tl.load(out + i, mask=rows < G, other=-1)
            s = tl.where(cols[None, :] == chosen[:, None], float("-inf"), s)
        top = tl.max(s, 1)
        better = top > best
        best_at = tl.where(better, start + tl.argmax(s, 1).to(tl.int32), best_at)
        best = tl.where(better, top, best)
    if J == 1:
        tl.store(out, rows, mask=rows < G)
    tl.store(out + J, best_at, mask=rows < G)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _rows_contiguous(x: Tensor) -> Tensor:
    """The kernels index any (B, heads, L) strides but want each token's head vector contiguous."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _smem_per_multiprocessor(x: Tensor) -> int:
    """Shared memory of one multiprocessor of x's GPU (a Hopper's under the CPU interpreter; 0, so the
    smallest launch settings, where torch does not report it)."""
    if not x.is_cuda:
        return HOPPER_SMEM
    return getattr(torch.cuda.get_device_properties(x.device), "shared_memory_per_multiprocessor", 0)


def _precision(x: Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # fp32 stays exact; tf32 is unused for 16-bit inputs


def check(x: Tensor, window: tuple[int, int]) -> None:
    """One clear error for inputs these kernels cannot take."""
    from gvr.models.attention import TRITON_MAX_UNIT

    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        raise ConfigError("attention backend 'triton' runs on CUDA tensors (on CPU only under TRITON_INTERPRET=1)")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not 16 <= x.shape[-1] <= 128:
        raise ConfigError(f"attention backend 'triton' takes fp16, bf16 or fp32 with head dim 16..128, "
                          f"got {x.dtype} with head dim {x.shape[-1]}")
    if window[0] * window[1] > TRITON_MAX_UNIT:
        raise ConfigError(f"attention backend 'triton' holds units of at most {TRITON_MAX_UNIT} tokens, "
                          f"got {window[0]}x{window[1]}")


def unit_means(q: Tensor, k: Tensor, grid: tuple[int, int, int], window: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Mean query and mean key of every unit, (B, heads, L, D) -> (B, heads, G, D) each, sums in float32."""
    check(q, window)
    q, k = _rows_contiguous(q), _rows_contiguous(k)
    geo = Geometry(grid, window, q.shape[-1])
    B, n = q.shape[:2]
    qm, km = (torch.empty(B, n, geo.G, geo.D, dtype=x.dtype, device=x.device) for x in (q, k))
    means[(geo.G, n, B)](q, k, qm, km, *_strides(q), *_strides(k), **geo.constants(q, k), **geo.launch("means"))
    return qm, km


def select_units(q: Tensor, k: Tensor, grid: tuple[int, int, int], window: tuple[int, int], topk: int) -> Tensor:
    """`attention.select_units` on these kernels: (B, heads, G, 1 + topk) int32, the own unit first."""
    return select_from_means(*unit_means(q, k, grid, window), topk)


def select_from_means(qm: Tensor, km: Tensor, topk: int) -> Tensor:
    """The selection from unit means (B, heads, G, D): (B, heads, G, 1 + topk) int32, the own unit first.

    One kernel pass per chosen column, each an argmax over the candidates not chosen yet, with the
    scores kept in float32 and the (G, G) score matrix never written (torch's `topk` over it costs
    several times more). Ties go to the lowest unit index; float32 scores can break a tie that
    scores rounded to a 16-bit input dtype would have made differently.
    """
    B, n, G, D = qm.shape
    n_top = min(topk, G - 1)
    units = torch.empty(B, n, G, 1 + n_top, dtype=torch.int32, device=qm.device)
    if n_top == 0:
        return units.copy_(torch.arange(G, device=qm.device)[:, None])
    block_g = 64
    for j in range(1, 1 + n_top):
        best_unit[(triton.cdiv(G, block_g), B * n)](qm, km, units, G, 1 + n_top, j, D=D,
                                                    BLOCK_D=_pow2(D, 16),
                                                    BLOCK_G=block_g, BLOCK_K=64)
    return units


# RoPE: the rotation of q and k, fused into one pass (and, for sparse local attention, with the unit means)


def _rope_tokens(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, inverse: bool,
                 strides: tuple = (None, None)) -> tuple[Tensor, Tensor]:
    """Rotated q and k, contiguous (B, heads, L, D) as the torch ops give them (SDPA's usual layout), or with the
    given `strides` (the backward: gradients in the layout of the tensors they belong to)."""
    q, k = _rows_contiguous(q), _rows_contiguous(k)
    qr, kr = _empty(q, strides[0]), _empty(k, strides[1])
    B, n, L, D = q.shape
    block_l = 64
    i64 = L * max(x.stride(2) for x in (q, k, qr, kr)) >= 2**31
    if triton.cdiv(L, block_l) > 65535:
        raise InputError(f"RoPE kernel takes at most {65535 * block_l} tokens, got {L}")
    rope_tokens[(n, triton.cdiv(L, block_l), B)](
        q, k, qr, kr, cos, sin, *_strides(q), *_strides(k), *_strides(qr), *_strides(kr), L, BLOCK_L=block_l, D=D,
        BLOCK_D=_pow2(D, 16), I64=i64, INVERSE=inverse, num_warps=4)
    return qr, kr


def _empty(like: Tensor, strides: tuple[int, ...] | None = None) -> Tensor:
    """An uninitialised tensor of like's shape and dtype, with these strides (contiguous if None)."""
    if strides is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    return torch.empty_strided(like.shape, strides, dtype=like.dtype, device=like.device)


def _grad_strides(x: Tensor) -> tuple[int, ...] | None:
    """x's strides, for its gradient to come back in; None (contiguous) where x is a view with gaps (a chunk of
    a wider tensor), which a gradient allocated with its strides would carry along."""
    dense = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride())) == x.numel()
    return x.stride() if dense else None


class _Rope(torch.autograd.Function):
    """RoPE of q and k; the backward turns the gradients back (the rotation's transpose is its inverse)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.shapes, ctx.strides, ctx.dtype = (q.shape, k.shape), (_grad_strides(q), _grad_strides(k)), q.dtype
        return _rope_tokens(q, k, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, dqr, dkr):
        return (*_rope_backward(ctx, dqr, dkr), None, None)


def _rope_backward(ctx, dqr: Tensor | None, dkr: Tensor | None) -> tuple[Tensor, Tensor]:
    cos, sin = ctx.saved_tensors
    dqr = dqr if dqr is not None else torch.zeros(ctx.shapes[0], dtype=ctx.dtype, device=cos.device)
    dkr = dkr if dkr is not None else torch.zeros(ctx.shapes[1], dtype=ctx.dtype, device=cos.device)
    return _rope_tokens(dqr, dkr, cos, sin, inverse=True, strides=ctx.strides)


class _RopeMeans(torch.autograd.Function):
    """RoPE of q and k tiled by sparse-local units, with the units' mean rotated q and k (no gradient)."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, geo):
        ctx.shapes, ctx.strides, ctx.dtype = (q.shape, k.shape), (_grad_strides(q), _grad_strides(k)), q.dtype
        q, k = _rows_contiguous(q), _rows_contiguous(k)
        qr, kr = _empty(q), _empty(k)
        B, n = q.shape[:2]
        qm, km = (torch.empty(B, n, geo.G, geo.D, dtype=x.dtype, device=x.device) for x in (q, k))
        if geo.G > 65535:
            raise InputError(f"RoPE kernel takes at most 65535 units, got {geo.G}")
        rope_units[(n, geo.G, B)](q, k, qr, kr, qm, km, cos, sin, *_strides(q), *_strides(k), *_strides(qr),
                                  *_strides(kr), **geo.constants(q, k, qr, kr), **geo.launch("rope"))
        ctx.save_for_backward(cos, sin)
        ctx.mark_non_differentiable(qm, km)
        return qr, kr, qm, km

    @staticmethod
    def backward(ctx, dqr, dkr, _dqm, _dkm):
        return (*_rope_backward(ctx, dqr, dkr), None, None, None)


def _table(rope: tuple[Tensor, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    return tuple(x.to(device=like.device, dtype=torch.float32).contiguous() for x in rope)


def rope(q: Tensor, k: Tensor, table: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """q and k (B, heads, L, D) rotated by the (cos, sin) tables (L, D / 2), in float32, out in their dtype."""
    check(q, (1, 1))
    return _Rope.apply(q, k, *_table(table, q))


def rope_with_means(q: Tensor, k: Tensor, rope: tuple[Tensor, Tensor], grid: tuple[int, int, int],
                    window: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`rope`, tiled by sparse-local units: rotated q and k, and every unit's mean rotated query and key
    (B, heads, G, D) of the values as stored, summed in float32, as `unit_means` of the rotated q and k
    gives them (up to the order of the float32 sums)."""
    check(q, window)
    return _RopeMeans.apply(q, k, *_table(rope, q), Geometry(grid, window, q.shape[-1]))


def rope_sparse_local(q: Tensor, k: Tensor, v: Tensor, rope: tuple[Tensor, Tensor], grid: tuple[int, int, int],
                      window: tuple[int, int], topk: int) -> Tensor:
    """Sparse local attention of RoPE-rotated q and k: the rotation pass yields the unit means, so the selection
    adds only its argmax passes."""
    q, k, qm, km = rope_with_means(q, k, rope, grid, window)
    return sparse_local(q, k, v, grid, window, select_from_means(qm, km, topk))


def _forward(q: Tensor, k: Tensor, v: Tensor, units: Tensor, geo: Geometry,
             lse: bool = True) -> tuple[Tensor, Tensor | None]:
    """Output and, if `lse`, the rows' log-sum-exp (log2) for the backward, (B, heads, G * BLOCK) in unit-slot
    order."""
    B, n = q.shape[:2]
    o = torch.empty_like(q)
    rows_lse = torch.empty(B, n, geo.G * geo.BLOCK, dtype=torch.float32, device=q.device) if lse else None
    scale = geo.D ** -0.5
    n_sel, launch = units.shape[-1], geo.launch("forward", q.element_size(), _smem_per_multiprocessor(q))
    forward[(geo.G * geo.BLOCK // launch["BLOCK_M"], n, B)](
        q, k, v, o, rows_lse if lse else o, units, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        scale * LOG2E, N_SEL=n_sel, SEL_P2=_pow2(n_sel), SPLIT=geo.BLOCK // launch["BLOCK_N"],
        PRECISION=_precision(q), STORE_LSE=lse, **geo.constants(q, k, v, o), **launch)
    return o, rows_lse


def readers(units: Tensor, G: int) -> tuple[Tensor, Tensor, Tensor]:
    """For every (batch x head, key unit): the query units that selected it, as a CSR list.

    Returns `readers` (all query units, grouped by key unit in ascending order), and per key unit
    `starts` and `counts` into it, both (B * heads * G,). One stable sort, no host sync.
    """
    BH, S = units.shape[0] * units.shape[1], units.shape[-1]
    key = (torch.arange(BH, device=units.device)[:, None] * G + units.reshape(BH, G * S).long()).flatten()
    order = torch.argsort(key, stable=True)
    query = torch.arange(G, device=units.device).repeat_interleave(S).repeat(BH)
    counts = torch.zeros(BH * G, dtype=torch.long, device=units.device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    starts = torch.cumsum(counts, 0) - counts
    return query[order].to(torch.int32), starts.to(torch.int32), counts.to(torch.int32)


def _backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, units: Tensor,
              geo: Geometry) -> tuple[Tensor, Tensor, Tensor]:
    B, n = q.shape[:2]
    do = _rows_contiguous(do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    scale = geo.D ** -0.5
    shape = dict(PRECISION=_precision(q), **geo.constants(q, k, v, o, do), **geo.launch("backward"))
    backward_dq[(geo.G, n, B)](
        q, k, v, o, do, dq, lse, delta, units, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        *_strides(do), scale * LOG2E, scale, N_SEL=units.shape[-1],
        SEL_P2=_pow2(units.shape[-1]), **shape)
    query, starts, counts = readers(units, geo.G)
    backward_dkdv[(geo.G, n, B)](
        q, k, v, do, dk, dv, lse, delta, query, starts, counts, *_strides(q), *_strides(k), *_strides(v),
        *_strides(do), scale * LOG2E, scale, **shape)
    return dq, dk, dv


class _SparseLocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, units, geo):
        o, lse = _forward(q, k, v, units, geo)
        ctx.save_for_backward(q, k, v, o, lse, units)
        ctx.geo = geo
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, units = ctx.saved_tensors
        return (*_backward(do, q, k, v, o, lse, units, ctx.geo), None, None)


def sparse_local(q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int, int], window: tuple[int, int],
                 units: Tensor) -> Tensor:
    """Sparse local attention of q, k, v (B, heads, L, D) over the selected `units` (B, heads, G, 1 + k).

    Where no gradient is wanted (inference), the forward skips the log-sum-exp the backward would need, and on
    Hopper GPUs it runs the warp-specialised kernel of `attention_gluon` (`inference_forward`)."""
    check(q, window)
    q, k, v = (_rows_contiguous(x) for x in (q, k, v))
    units = units.to(torch.int32).contiguous()
    geo = Geometry(grid, window, q.shape[-1])
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        return _SparseLocal.apply(q, k, v, units, geo)
    return inference_forward(q, k, v, units, geo)


def inference_forward(q: Tensor, k: Tensor, v: Tensor, units: Tensor, geo: Geometry) -> Tensor:
    """The forward without a gradient: the warp-specialised Gluon kernel where it runs on this machine
    (`attention_gluon.supported`: Hopper, 16-bit, head dim 64), else this module's kernel without the
    log-sum-exp. Both give the same output, bit for bit."""
    window = (geo.WH, geo.WW)
    if attention_gluon.supported(q, k, v, window):
        return attention_gluon.forward(q, k, v, units, (geo.T, geo.H, geo.W), window)
    return _forward(q, k, v, units, geo, lse=False)[0]
