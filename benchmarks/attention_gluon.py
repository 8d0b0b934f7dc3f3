"""A warp-specialised sparse local forward in Gluon (Hopper), measured against the Triton kernel; not used by gvr.

FlashAttention-3 hides memory latency with producer warps that fill a ring of shared-memory buffers and keeps the
tensor cores busy with several consumer warpgroups that run independently. This prototype tries that on the sparse
local forward (inference, head dim 64, bf16, 9x12 units) with Triton's Gluon dialect (`triton.experimental.gluon`):
- a persistent grid, one program per multiprocessor, walking (batch x head, query unit) tiles;
- a producer partition (PW warps) that gathers each tile's query unit and every selected key unit's k and v rows
  with `cp.async` into NVMMA-swizzled buffers (a unit's rows are 9 runs of 12 tokens, so one TMA box, whose sides
  must be powers of two, cannot fetch it) and signals `mbarrier`s; padding slots are zero-filled;
- two consumer partitions of 4 warps, each owning alternate tiles: the 128 query slots as two 64-row halves, one
  wgmma for q k^T, the online softmax, one wgmma for p v from registers, per key block; the output stored from
  registers. Variants (keyword arguments of `forward`): a producer per consumer (`shared=False`), more stages
  (`ns`), double-buffered query tiles (`qb`), the second half's q k^T in flight under the first's softmax
  (`overlap`), p v left in flight under the next q k^T (`async_pv`), one consumer per half (`halves`: four
  consumers, two per tile).

Outputs are bit-identical to `attention_triton`'s forward. Results and what they mean: benchmarks/README.md,
"A warp-specialised forward in Gluon". Needs a Hopper GPU and Triton >= 3.6 (no interpreter runs Gluon).

    python benchmarks/attention_gluon.py --out benchmarks/results/attention-gluon-nvidia-h200.json
"""

import argparse
import datetime
import functools
import json
import math
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

LOG2E = 1.4426950408889634
# A consumer's tiles: 64 query rows x 128 key slots of scores (S), 64 x 64 of output (O), p as wgmma's register operand.
S_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16]))
O_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16]))
P_LAYOUT = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2))
ROW_S = gl.constexpr(gl.SliceLayout(1, S_LAYOUT))
ROW_O = gl.constexpr(gl.SliceLayout(1, O_LAYOUT))
COL_S = gl.constexpr(gl.SliceLayout(0, S_LAYOUT))


@gluon.jit
def _unit(g, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr, WH: gl.constexpr,
          WW: gl.constexpr):
    t = g // (GH * GW)
    r = g - t * (GH * GW)
    uy = r // GW
    ux = r - uy * GW
    return (t * H + uy * WH) * W + ux * WW, gl.minimum(H - uy * WH, WH), gl.minimum(W - ux * WW, WW)


@gluon.jit
def _slot_tokens(origin, rows, cols, slot, W: gl.constexpr, WH: gl.constexpr, WW: gl.constexpr):
    """Raster index of slots `slot` of the unit at `origin` with `rows` x `cols` tokens, and whether each holds
    a token (as `attention_triton.unit_slots`)."""
    valid = (slot < WH * WW) & (slot // WW < rows) & (slot % WW < cols)
    return origin + (slot // WW) * W + slot % WW, valid


@gluon.jit
def _tile(tile, G: gl.constexpr, HEADS):
    """Batch, head and query unit of a tile (tiles run over units first, then heads, then the batch)."""
    bh = tile // G
    b = bh // HEADS
    return b, bh - b * HEADS, tile - bh * G


@gluon.jit
def _key_bias(UNITS, at, layout: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr,
              GW: gl.constexpr, WH: gl.constexpr, WW: gl.constexpr):
    """Additive score bias of the selected unit UNITS[at]'s 128 slots: 0 where a slot holds a token, -inf elsewhere."""
    origin, rows, cols = _unit(gl.load(UNITS + at), H, W, GH, GW, WH, WW)
    _, valid = _slot_tokens(origin, rows, cols, gl.arange(0, 128, layout=layout), W, WH, WW)
    return gl.where(valid, 0.0, float("-inf"))


@gluon.jit
def _gather(buf, X, origin, rows, cols, stride_l, layout: gl.constexpr, W: gl.constexpr, WH: gl.constexpr,
            WW: gl.constexpr, CHUNK: gl.constexpr):
    d = gl.arange(0, 64, layout=gl.SliceLayout(0, layout))
    for r in gl.static_range(128 // CHUNK):
        slot = r * CHUNK + gl.arange(0, CHUNK, layout=gl.SliceLayout(1, layout))
        tok, valid = _slot_tokens(origin, rows, cols, slot, W, WH, WW)
        ptrs = X + tok[:, None] * stride_l + d[None, :]
        async_copy.async_copy_global_to_shared(buf.slice(r * CHUNK, CHUNK), ptrs, valid[:, None] & (d < 64)[None, :])


@gluon.jit
def _producer(c, Q, K, V, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, HEADS,
              sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
              G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr,
              WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr, NS: gl.constexpr, QB: gl.constexpr,
              PW: gl.constexpr, CHUNK: gl.constexpr, SHARED: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PW, 1], [1, 0])
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    i = 0
    for tile in range(pid + (0 if SHARED else c) * nprog, n_tiles, (1 if SHARED else 2) * nprog):
        if SHARED:
            cc = i % 2
            it = i // 2
        else:  # a tensor in both branches, as Gluon requires of a value an `if` assigns
            cc = i * 0 + c
            it = i
        b, h, g = _tile(tile, G, HEADS)
        origin, rows, cols = _unit(g, H, W, GH, GW, WH, WW)
        qi = cc * QB + it % QB
        mbarrier.wait(q_empty.index(qi), ((it // QB) & 1) ^ 1)
        _gather(q_bufs.index(qi), Q + b * sqb + h * sqh, origin, rows, cols, sql, layout, W, WH, WW, CHUNK)
        async_copy.mbarrier_arrive(q_ready.index(qi), increment_count=False)
        for j in range(N_SEL):
            u = gl.load(UNITS + tile * N_SEL + j)
            origin, rows, cols = _unit(u, H, W, GH, GW, WH, WW)
            n = it * N_SEL + j
            idx = cc * NS + n % NS
            mbarrier.wait(kv_empty.index(idx), ((n // NS) & 1) ^ 1)
            _gather(k_bufs.index(idx), K + b * skb + h * skh, origin, rows, cols, skl, layout, W, WH, WW, CHUNK)
            _gather(v_bufs.index(idx), V + b * svb + h * svh, origin, rows, cols, svl, layout, W, WH, WW, CHUNK)
            async_copy.mbarrier_arrive(kv_ready.index(idx), increment_count=False)
        i += 1


@gluon.jit
def _softmax(s, bias, m, rowsum, qk_scale):
    s = s * qk_scale + bias[None, :]
    m_new = gl.maximum(m, gl.max(s, 1))
    alpha = gl.exp2(m - m_new)
    p = gl.exp2(s - m_new[:, None])
    rowsum = rowsum * alpha + gl.sum(p, 1)
    return p, m_new, rowsum, alpha


@gluon.jit
def _store_half(OUT, o, rowsum, origin, rows, cols, START: gl.constexpr, sol, layout: gl.constexpr,
                W: gl.constexpr, WH: gl.constexpr, WW: gl.constexpr):
    """Rows START..START+63 of a query unit's output, normalised, stored through `layout`."""
    o = gl.convert_layout((o * gl.convert_layout(1.0 / rowsum, ROW_O)[:, None]).to(gl.bfloat16), layout)
    d = gl.arange(0, 64, layout=gl.SliceLayout(0, layout))
    tok, valid = _slot_tokens(origin, rows, cols, START + gl.arange(0, 64, layout=gl.SliceLayout(1, layout)), W, WH, WW)
    gl.store(OUT + tok[:, None] * sol + d[None, :], o, mask=valid[:, None] & (d < 64)[None, :])


@gluon.jit
def _consumer(c, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, HEADS,
              sob, soh, sol, qk_scale,
              G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr,
              WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr, NS: gl.constexpr, OVERLAP: gl.constexpr,
              QB: gl.constexpr, EPI_CONVERT: gl.constexpr, ASYNC: gl.constexpr):
    out_layout: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    it = 0
    for tile in range(pid + c * nprog, n_tiles, 2 * nprog):
        b, h, g = _tile(tile, G, HEADS)
        qi = c * QB + it % QB
        mbarrier.wait(q_ready.index(qi), (it // QB) & 1)
        qb = q_bufs.index(qi)
        q0 = qb.slice(0, 64)
        q1 = qb.slice(64, 64)
        m0 = gl.full([64], float("-inf"), gl.float32, ROW_S)
        m1 = gl.full([64], float("-inf"), gl.float32, ROW_S)
        rowsum0 = gl.zeros([64], gl.float32, ROW_S)
        rowsum1 = gl.zeros([64], gl.float32, ROW_S)
        o0 = gl.zeros([64, 64], gl.float32, O_LAYOUT)
        o1 = gl.zeros([64, 64], gl.float32, O_LAYOUT)
        zero = gl.zeros([64, 128], gl.float32, S_LAYOUT)
        prev = 0
        if ASYNC:
            o1 = warpgroup_mma_init(o1)
        for j in range(N_SEL):
            bias = _key_bias(UNITS, tile * N_SEL + j, COL_S, H, W, GH, GW, WH, WW)
            n = it * N_SEL + j
            idx = c * NS + n % NS
            mbarrier.wait(kv_ready.index(idx), (n // NS) & 1)
            fence_async_shared()
            kT = k_bufs.index(idx).permute((1, 0))
            vb = v_bufs.index(idx)
            if OVERLAP:
                s0 = warpgroup_mma(q0, kT, zero, use_acc=False, is_async=True)
                s1 = warpgroup_mma(q1, kT, zero, use_acc=False, is_async=True)
                s0 = warpgroup_mma_wait(1, deps=(s0, ))
                p0, m0, rowsum0, a0 = _softmax(s0, bias, m0, rowsum0, qk_scale)
                o0 = o0 * gl.convert_layout(a0, ROW_O)[:, None]
                o0 = warpgroup_mma(gl.convert_layout(p0.to(gl.bfloat16), P_LAYOUT), vb, o0, is_async=True)
                s1 = warpgroup_mma_wait(1, deps=(s1, ))
                if j == N_SEL - 1:
                    mbarrier.arrive(q_empty.index(qi), count=1)
                p1, m1, rowsum1, a1 = _softmax(s1, bias, m1, rowsum1, qk_scale)
                o1 = o1 * gl.convert_layout(a1, ROW_O)[:, None]
                o1 = warpgroup_mma(gl.convert_layout(p1.to(gl.bfloat16), P_LAYOUT), vb, o1, is_async=True)
                o0, o1 = warpgroup_mma_wait(0, deps=(o0, o1))
            elif ASYNC:
                s0 = warpgroup_mma(q0, kT, zero, use_acc=False, is_async=True)
                s0, o1 = warpgroup_mma_wait(0, deps=(s0, o1))
                if j > 0:
                    mbarrier.arrive(kv_empty.index(prev), count=1)
                p0, m0, rowsum0, a0 = _softmax(s0, bias, m0, rowsum0, qk_scale)
                o0 = o0 * gl.convert_layout(a0, ROW_O)[:, None]
                o0 = warpgroup_mma(gl.convert_layout(p0.to(gl.bfloat16), P_LAYOUT), vb, o0, is_async=True)
                s1 = warpgroup_mma(q1, kT, zero, use_acc=False, is_async=True)
                s1, o0 = warpgroup_mma_wait(0, deps=(s1, o0))
                if j == N_SEL - 1:
                    mbarrier.arrive(q_empty.index(qi), count=1)
                p1, m1, rowsum1, a1 = _softmax(s1, bias, m1, rowsum1, qk_scale)
                o1 = o1 * gl.convert_layout(a1, ROW_O)[:, None]
                o1 = warpgroup_mma(gl.convert_layout(p1.to(gl.bfloat16), P_LAYOUT), vb, o1, is_async=True)
                prev = idx
            else:
                s0 = warpgroup_mma(q0, kT, zero, use_acc=False)
                p0, m0, rowsum0, a0 = _softmax(s0, bias, m0, rowsum0, qk_scale)
                o0 = o0 * gl.convert_layout(a0, ROW_O)[:, None]
                o0 = warpgroup_mma(gl.convert_layout(p0.to(gl.bfloat16), P_LAYOUT), vb, o0)
                s1 = warpgroup_mma(q1, kT, zero, use_acc=False)
                if j == N_SEL - 1:
                    mbarrier.arrive(q_empty.index(qi), count=1)
                p1, m1, rowsum1, a1 = _softmax(s1, bias, m1, rowsum1, qk_scale)
                o1 = o1 * gl.convert_layout(a1, ROW_O)[:, None]
                o1 = warpgroup_mma(gl.convert_layout(p1.to(gl.bfloat16), P_LAYOUT), vb, o1)
            if not ASYNC:
                mbarrier.arrive(kv_empty.index(idx), count=1)
        if ASYNC:
            o1 = warpgroup_mma_wait(0, deps=(o1, ))
            mbarrier.arrive(kv_empty.index(prev), count=1)
        origin, rows, cols = _unit(g, H, W, GH, GW, WH, WW)
        OUT = Out + b * sob + h * soh
        if EPI_CONVERT:
            _store_half(OUT, o0, rowsum0, origin, rows, cols, 0, sol, out_layout, W, WH, WW)
            _store_half(OUT, o1, rowsum1, origin, rows, cols, 64, sol, out_layout, W, WH, WW)
        else:
            _store_half(OUT, o0, rowsum0, origin, rows, cols, 0, sol, O_LAYOUT, W, WH, WW)
            _store_half(OUT, o1, rowsum1, origin, rows, cols, 64, sol, O_LAYOUT, W, WH, WW)
        it += 1


@gluon.jit
def _consumer_half(c, hf, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, HEADS,
                   sob, soh, sol, qk_scale,
                   G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr,
                   WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr, NS: gl.constexpr, QB: gl.constexpr):
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    it = 0
    for tile in range(pid + c * nprog, n_tiles, 2 * nprog):
        b, h, g = _tile(tile, G, HEADS)
        qi = c * QB + it % QB
        mbarrier.wait(q_ready.index(qi), (it // QB) & 1)
        qh = q_bufs.index(qi).slice(hf * 64, 64)
        m = gl.full([64], float("-inf"), gl.float32, ROW_S)
        rowsum = gl.zeros([64], gl.float32, ROW_S)
        o = gl.zeros([64, 64], gl.float32, O_LAYOUT)
        zero = gl.zeros([64, 128], gl.float32, S_LAYOUT)
        for j in range(N_SEL):
            bias = _key_bias(UNITS, tile * N_SEL + j, COL_S, H, W, GH, GW, WH, WW)
            n = it * N_SEL + j
            idx = c * NS + n % NS
            mbarrier.wait(kv_ready.index(idx), (n // NS) & 1)
            fence_async_shared()
            s = warpgroup_mma(qh, k_bufs.index(idx).permute((1, 0)), zero, use_acc=False)
            if j == N_SEL - 1:
                mbarrier.arrive(q_empty.index(qi), count=1)
            p, m, rowsum, a = _softmax(s, bias, m, rowsum, qk_scale)
            o = o * gl.convert_layout(a, ROW_O)[:, None]
            o = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), P_LAYOUT), v_bufs.index(idx), o)
            mbarrier.arrive(kv_empty.index(idx), count=1)
        origin, rows, cols = _unit(g, H, W, GH, GW, WH, WW)
        _store_half(Out + b * sob + h * soh, o, rowsum, origin, rows, cols, hf * 64, sol, O_LAYOUT, W, WH, WW)
        it += 1


@gluon.jit
def sparse_local_fwd(Q, K, V, Out, UNITS, n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
                     qk_scale, G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr,
                     WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr, NS: gl.constexpr,
                     OVERLAP: gl.constexpr, PRODUCER_REGS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                     QB: gl.constexpr, PW: gl.constexpr, EPI_CONVERT: gl.constexpr, HALVES: gl.constexpr,
                     CHUNK: gl.constexpr, SHARED: gl.constexpr, ASYNC: gl.constexpr):
    smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * QB, 128, 64], smem)
    k_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * NS, 128, 64], smem)
    v_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * NS, 128, 64], smem)
    q_ready = gl.allocate_shared_memory(gl.int64, [2 * QB, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2 * QB, 1], mbarrier.MBarrierLayout())
    kv_ready = gl.allocate_shared_memory(gl.int64, [2 * NS, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [2 * NS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2 * QB):
        mbarrier.init(q_ready.index(i), count=32 * PW)
        mbarrier.init(q_empty.index(i), count=2 if HALVES else 1)
    for i in gl.static_range(2 * NS):
        mbarrier.init(kv_ready.index(i), count=32 * PW)
        mbarrier.init(kv_empty.index(i), count=2 if HALVES else 1)
    # Partition arguments are spelled out: Gluon takes no tuple built by concatenation here.
    if HALVES:
        gl.warp_specialize([
            (_consumer_half, (0, 0, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready,
              kv_empty, n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_consumer_half, (0, 1, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready,
              kv_empty, n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_consumer_half, (1, 0, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready,
              kv_empty, n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_consumer_half, (1, 1, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready,
              kv_empty, n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_producer, (0, Q, K, V, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, G, H, W, GH, GW, WH, WW, N_SEL,
              NS, QB, PW, CHUNK, SHARED)),
        ], [4, 4, 4, PW], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])
    elif SHARED:
        gl.warp_specialize([
            (_consumer, (0, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, OVERLAP, QB,
              EPI_CONVERT, ASYNC)),
            (_consumer, (1, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, OVERLAP, QB,
              EPI_CONVERT, ASYNC)),
            (_producer, (0, Q, K, V, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, G, H, W, GH, GW, WH, WW, N_SEL,
              NS, QB, PW, CHUNK, SHARED)),
        ], [4, PW], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (0, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, OVERLAP, QB,
              EPI_CONVERT, ASYNC)),
            (_consumer, (1, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sob, soh, sol, qk_scale, G, H, W, GH, GW, WH, WW, N_SEL, NS, OVERLAP, QB,
              EPI_CONVERT, ASYNC)),
            (_producer, (0, Q, K, V, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, G, H, W, GH, GW, WH, WW, N_SEL,
              NS, QB, PW, CHUNK, SHARED)),
            (_producer, (1, Q, K, V, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
              n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, G, H, W, GH, GW, WH, WW, N_SEL,
              NS, QB, PW, CHUNK, SHARED)),
        ], [4, PW, PW], [CONSUMER_REGS, PRODUCER_REGS, PRODUCER_REGS])

def forward(q, k, v, units, grid, window=(9, 12), ns=2, overlap=False, programs=None, producer_regs=40,
            consumer_regs=216, qb=1, pw=4, epi_convert=True, halves=False, chunk=128, shared=True, async_pv=False):
    """Output of the sparse local forward (inference) for q, k, v (B, heads, L, 64) bf16 and `units` (B, heads, G, n)
    int32, as `attention_triton.sparse_local` computes it. Keyword arguments: the variants of VARIANTS."""
    B, heads, L, D = q.shape
    T, Hg, Wg = grid
    WH, WW = window
    GH, GW = math.ceil(Hg / WH), math.ceil(Wg / WW)
    G = T * GH * GW
    o = torch.empty_like(q)
    n_tiles = B * heads * G
    if programs is None:
        programs = torch.cuda.get_device_properties(q.device).multi_processor_count
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3])
    sparse_local_fwd[(programs, )](q, k, v, o, units, n_tiles, heads, *strides,
                                   D ** -0.5 * LOG2E, G=G, H=Hg, W=Wg, GH=GH, GW=GW, WH=WH, WW=WW,
                                   N_SEL=units.shape[-1], NS=ns, OVERLAP=overlap, PRODUCER_REGS=producer_regs,
                                   CONSUMER_REGS=consumer_regs, QB=qb, PW=pw, EPI_CONVERT=epi_convert, HALVES=halves,
                                   CHUNK=chunk, SHARED=shared, ASYNC=async_pv, num_warps=4)
    return o


VARIANTS = {
    "base": {},
    "producer_per_consumer": {"shared": False, "pw": 2, "producer_regs": 56},
    "three_stages": {"ns": 3, "epi_convert": False},
    "two_query_buffers": {"qb": 2},
    "overlap": {"overlap": True, "ns": 3, "epi_convert": False},
    "async_pv": {"async_pv": True},
    "halves": {"halves": True, "consumer_regs": 112, "producer_regs": 24, "chunk": 32},
}


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="20x68x120")
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--topk", default="1,3,7")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        sys.exit("benchmarks/attention_gluon.py needs a Hopper GPU")
    from gvr.models import attention_triton as TK

    grid = tuple(int(x) for x in args.grid.split("x"))
    geo = TK.Geometry(grid, (9, 12), 64)
    metrics: dict[str, float] = {}
    torch.manual_seed(0)
    for topk in (int(x) for x in args.topk.split(",")):
        q, k, v = (torch.randn(1, args.heads, math.prod(grid), 64, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        units = TK.select_units(q, k, grid, (9, 12), topk).to(torch.int32).contiguous()
        ref = TK._forward(q, k, v, units, geo, lse=False)[0]
        inputs = (q, k, v, units, grid)
        metrics[f"top{topk}_triton_ms"] = bench(functools.partial(TK._forward, q, k, v, units, geo, lse=False))
        for name, kw in VARIANTS.items():
            out = forward(*inputs, **kw)
            metrics[f"top{topk}_{name}_max_abs_diff"] = (out.float() - ref.float()).abs().max().item()
            metrics[f"top{topk}_{name}_ms"] = bench(functools.partial(forward, *inputs, **kw))
        print({k: round(v, 4) for k, v in metrics.items() if k.startswith(f"top{topk}_")}, flush=True)
    if args.out:
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                  "date": datetime.date.today().isoformat(),
                  "command": " ".join(["python benchmarks/attention_gluon.py", *(argv if argv is not None else sys.argv[1:])]),
                  "grid": args.grid, "heads": args.heads, "head_dim": 64, "metrics": metrics}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
