"""Sparse local attention's forward for Hopper GPUs, warp-specialised, in Triton's Gluon dialect.

`attention_triton.sparse_local` calls `forward` for the inference forward (no gradient wanted) wherever
`supported` holds: a compute capability 9 GPU (H100, H200), bf16 or fp16 q, k, v of head dim 64, units
of 65 to 128 tokens (the paper's 9x12 is 108), offsets that fit int32, and a Triton with Gluon (>= 3.6).
Elsewhere, and for training, the Triton kernel of `attention_triton` runs. The two compute the same
products in the same order, so their outputs are bit-identical.

Why a second kernel: at head dim 64 a score costs as much exp2 time as tensor-core time, so the tensor cores
idle unless other warps' softmax runs under them, and a unit's rows must be gathered (9 runs of 12 tokens; a
TMA box's sides are powers of two, so TMA cannot fetch one). This kernel does what FlashAttention-3 does at
head dim 64, with the gather:
- a persistent grid: one program of 16 warps per multiprocessor walks the tiles (batch x head x query unit);
- a producer warpgroup (56 registers) gathers each tile's q (two 64-row halves) and each selected unit's k
  and v (128 slots) with `cp.async` into one ring of QB query tiles and NS key blocks, in tile order, and
  signals `mbarrier`s; padding slots are zero-filled and cost no memory traffic;
- three consumer warpgroups (144-168 registers) take every third 64-row half: per key block one wgmma for
  q k^T, the online softmax (exp2 domain, padding slots masked by an additive -inf), one wgmma for p v from
  registers. A tile's two halves run on two consumers at about the same time and share its key blocks. Slots
  no unit fills (112-127 for 9x12 units) lie in the same registers of every thread, so the compiler drops
  their scaling and exponentials: an eighth fewer a block, 3% off the time and 5% off the energy at top-1;
- a consumer leaves its normalised output in the tile's query buffer, and the producer stores it to global
  memory (rows of 16 bytes) before it gathers the next q there: stored by the consumers, the output cost
  13% of the kernel at top-1;
- a unit whose tokens all lie in its first 64 slots (a cut last row of units, as 68 token rows leave of 9x12
  units) has an empty second query half, which is neither gathered, computed nor stored.
On an H200 at 20x68x120 tokens, 24 heads, top-1 this takes 1.57 M SM cycles against the Triton kernel's 1.94 M:
0.852 ms (210 TFLOP/s on the keys attended) at the 1.7-1.9 GHz the card holds under its power cap; in a steady
stream of calls 0.873 ms (205 TFLOP/s) and 590 mJ a call against 1.063 ms and 761 mJ (benchmarks/README.md,
"A warp-specialised forward in Gluon").
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Gluon ships with Triton >= 3.6; its API is experimental, so anything missing means "not supported"
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, warpgroup_mma
except ImportError:  # pragma: no cover - exercised where Triton is older
    gluon = None

LOG2E = 1.4426950408889634
QB, NS = 4, 5  # query tiles and key blocks in the ring: 4 x 16 + 5 x 32 KiB = 224 KiB of shared memory
# Registers of two consumers and the producer; consumer 0, the default partition, gets the rest (168): 512 a thread
# over the four 4-warp partitions, the whole register file.
CONSUMER_REGS, PRODUCER_REGS = 144, 56
CHUNK = 64  # rows per cp.async gather step


def supported(q: Tensor, k: Tensor, v: Tensor, window: tuple[int, int]) -> bool:
    """Whether `forward` runs for these inputs (B, heads, L, D) on this machine: a Hopper GPU, a Triton with
    Gluon, `fits`, and GVR_GLUON not set to 0 (the switch back to the Triton kernel)."""
    if gluon is None or os.environ.get("GVR_GLUON", "1") == "0":
        return False
    return q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9 and fits(q, k, v, window)


def fits(q: Tensor, k: Tensor, v: Tensor, window: tuple[int, int]) -> bool:
    """Whether the kernel is written for these inputs: bf16 or fp16 alike, head dim 64 and contiguous, rows
    aligned to 16 bytes (its copies move 16 bytes), units of 65-128 slots (two 64-row query halves, 128-slot
    key blocks), and every offset it forms (b * stride + h * stride + token * stride + d) within int32."""
    if q.dtype not in (torch.bfloat16, torch.float16) or not q.dtype == k.dtype == v.dtype:
        return False
    if q.shape[-1] != 64 or not 64 < window[0] * window[1] <= 128:
        return False
    if any(x.stride(-1) != 1 or any(st % 8 for st in x.stride()[:-1]) or x.data_ptr() % 16 for x in (q, k, v)):
        return False
    return all(sum((n - 1) * s for n, s in zip(x.shape, x.stride())) < 2**31 for x in (q, k, v))


def forward(q: Tensor, k: Tensor, v: Tensor, units: Tensor, grid: tuple[int, int, int],
            window: tuple[int, int], programs: int | None = None, **launch) -> Tensor:
    """Sparse local attention's output for q, k, v (B, heads, L, 64), rows contiguous, and the selected
    `units` (B, heads, G, n) int32 contiguous, as `attention_triton.sparse_local` defines it (no gradient).
    `launch` overrides QB, NS, CONSUMER_REGS, PRODUCER_REGS or CHUNK (for benchmarks)."""
    B, heads = q.shape[:2]
    T, H, W = grid
    WH, WW = window
    GH, GW = -(-H // WH), -(-W // WW)
    G = T * GH * GW
    o = torch.empty_like(q)
    n_tiles = B * heads * G
    if programs is None:
        programs = torch.cuda.get_device_properties(q.device).multi_processor_count
    sizes = {"QB": QB, "NS": NS, "CONSUMER_REGS": CONSUMER_REGS, "PRODUCER_REGS": PRODUCER_REGS, "CHUNK": CHUNK,
             **launch}
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3])
    _sparse_local_fwd[(min(programs, n_tiles), )](
        q, k, v, o, units, n_tiles, heads, *strides, q.shape[-1] ** -0.5 * LOG2E, G=G, H=H, W=W, GH=GH, GW=GW,
        WH=WH, WW=WW, N_SEL=units.shape[-1], **sizes, num_warps=4)
    return o


if gluon is not None:
    # renamed after Triton 3.6
    _barrier = getattr(gl, "barrier", None) or gl.thread_barrier
    _async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

    # A consumer's tiles: 64 query rows x 128 key slots of scores (S), 64 x 64 of output (O), p as wgmma's
    # register operand; the producer's gathers and stores in rows of 16 bytes.
    S_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 16]))
    O_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16]))
    P_LAYOUT = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2))
    ROW_S = gl.constexpr(gl.SliceLayout(1, S_LAYOUT))
    ROW_O = gl.constexpr(gl.SliceLayout(1, O_LAYOUT))
    COL_S = gl.constexpr(gl.SliceLayout(0, S_LAYOUT))
    ROWS_16B = gl.constexpr(gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0]))

    @gluon.jit
    def _unit(g, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr, WH: gl.constexpr,
              WW: gl.constexpr):
        """Raster index of unit g's first token, and its numbers of token rows and columns (edge units are cut)."""
        t = g // (GH * GW)
        r = g - t * (GH * GW)
        uy = r // GW
        ux = r - uy * GW
        return (t * H + uy * WH) * W + ux * WW, gl.minimum(H - uy * WH, WH), gl.minimum(W - ux * WW, WW)

    @gluon.jit
    def _slot_tokens(origin, rows, cols, slot, W: gl.constexpr, WH: gl.constexpr, WW: gl.constexpr):
        """Raster index of slots `slot` of the unit at `origin` with `rows` x `cols` tokens, and whether each
        holds a token (as `attention_triton.unit_slots`: where W is a multiple of WW no unit is cut on the right,
        and a unit's tokens are its first rows * WW slots)."""
        if W % WW == 0:
            valid = (slot < WH * WW) & (slot < rows * WW)
        else:
            valid = (slot < WH * WW) & (slot // WW < rows) & (slot % WW < cols)
        return origin + (slot // WW) * W + slot % WW, valid

    @gluon.jit
    def _has_second_half(rows, cols, WW: gl.constexpr):
        """Whether a unit of `rows` x `cols` tokens has a token in slots 64-127 (its last token is at slot
        (rows - 1) * WW + cols - 1): the paper's 9x12 units on 68 token rows leave a last row of units of 5 x 12,
        whose second query half holds none."""
        return (rows - 1) * WW + cols > 64

    @gluon.jit
    def _tile(tile, G: gl.constexpr, HEADS):
        """Batch, head and query unit of a tile (tiles run over units first, then heads, then the batch)."""
        bh = tile // G
        b = bh // HEADS
        return b, bh - b * HEADS, tile - bh * G

    @gluon.jit
    def _gather(buf, X, origin, rows, cols, stride_l, START: gl.constexpr, ROWS: gl.constexpr, W: gl.constexpr,
                WH: gl.constexpr, WW: gl.constexpr, CHUNK: gl.constexpr):
        """cp.async of slots START..START+ROWS of the unit at `origin` into `buf`, CHUNK rows at a time."""
        d = gl.arange(0, 64, layout=gl.SliceLayout(0, ROWS_16B))
        for r in gl.static_range(ROWS // CHUNK):
            slot = START + r * CHUNK + gl.arange(0, CHUNK, layout=gl.SliceLayout(1, ROWS_16B))
            tok, valid = _slot_tokens(origin, rows, cols, slot, W, WH, WW)
            ptrs = X + tok[:, None] * stride_l + d[None, :]
            _async_load(buf.slice(r * CHUNK, CHUNK), ptrs, valid[:, None] & (d < 64)[None, :])

    @gluon.jit
    def _store_rows(OUT, x, origin, rows, cols, START, sol, layout: gl.constexpr, W: gl.constexpr,
                    WH: gl.constexpr, WW: gl.constexpr):
        """Rows START..START+63 of a query unit's output, x (64 x 64, in `layout`)."""
        d = gl.arange(0, 64, layout=gl.SliceLayout(0, layout))
        tok, valid = _slot_tokens(origin, rows, cols, START + gl.arange(0, 64, layout=gl.SliceLayout(1, layout)),
                                  W, WH, WW)
        gl.store(OUT + tok[:, None] * sol + d[None, :], x, mask=valid[:, None] & (d < 64)[None, :])

    @gluon.jit
    def _store_tile(Out, q_bufs, qi, tile, HEADS, sob, soh, sol, G: gl.constexpr, H: gl.constexpr,
                    W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr, WH: gl.constexpr, WW: gl.constexpr):
        """The output of `tile`, left by the consumers in query buffer qi (two 64-row halves)."""
        b, h, g = _tile(tile, G, HEADS)
        origin, rows, cols = _unit(g, H, W, GH, GW, WH, WW)
        _store_rows(Out + b * sob + h * soh, q_bufs.index(2 * qi).load(ROWS_16B), origin, rows, cols, 0, sol,
                    ROWS_16B, W, WH, WW)
        if _has_second_half(rows, cols, WW):
            _store_rows(Out + b * sob + h * soh, q_bufs.index(2 * qi + 1).load(ROWS_16B), origin, rows, cols, 64,
                        sol, ROWS_16B, W, WH, WW)

    @gluon.jit
    def _producer(Q, K, V, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles,
                  HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
                  G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr,
                  WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr, NS: gl.constexpr, QB: gl.constexpr,
                  CHUNK: gl.constexpr):
        """Fills the ring in tile order: tile i's q into query buffer i % QB, once the output of tile i - QB that
        the consumers left there is stored; then its key blocks, n = i * N_SEL + j, into key buffer n % NS. At the
        end it stores the last QB tiles' outputs."""
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        i = 0
        for tile in range(pid, n_tiles, nprog):
            b, h, g = _tile(tile, G, HEADS)
            origin, rows, cols = _unit(g, H, W, GH, GW, WH, WW)
            qi = i % QB
            mbarrier.wait(q_empty.index(qi), ((i // QB) & 1) ^ 1)
            if i >= QB:
                _store_tile(Out, q_bufs, qi, tile - QB * nprog, HEADS, sob, soh, sol, G, H, W, GH, GW, WH, WW)
                _barrier()
            _gather(q_bufs.index(2 * qi), Q + b * sqb + h * sqh, origin, rows, cols, sql, 0, 64, W, WH, WW, CHUNK)
            if _has_second_half(rows, cols, WW):  # else the consumers skip it
                _gather(q_bufs.index(2 * qi + 1), Q + b * sqb + h * sqh, origin, rows, cols, sql, 64, 64, W, WH, WW,
                        CHUNK)
            async_copy.mbarrier_arrive(q_ready.index(qi), increment_count=False)
            for j in range(N_SEL):
                u = gl.load(UNITS + tile * N_SEL + j)
                origin, rows, cols = _unit(u, H, W, GH, GW, WH, WW)
                n = i * N_SEL + j
                mbarrier.wait(kv_empty.index(n % NS), ((n // NS) & 1) ^ 1)
                _gather(k_bufs.index(n % NS), K + b * skb + h * skh, origin, rows, cols, skl, 0, 128, W, WH, WW,
                        CHUNK)
                _gather(v_bufs.index(n % NS), V + b * svb + h * svh, origin, rows, cols, svl, 0, 128, W, WH, WW,
                        CHUNK)
                async_copy.mbarrier_arrive(kv_ready.index(n % NS), increment_count=False)
            i += 1
        for it in range(gl.maximum(i - QB, 0), i):
            mbarrier.wait(q_empty.index(it % QB), (it // QB) & 1)
            _store_tile(Out, q_bufs, it % QB, pid + it * nprog, HEADS, sob, soh, sol, G, H, W, GH, GW, WH, WW)

    @gluon.jit
    def _consumer(c, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, qk_scale,
                  G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr, GW: gl.constexpr,
                  WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr, NS: gl.constexpr, QB: gl.constexpr):
        """Every third 64-row half of the program's tiles, starting at half c. Per key block: S = q k^T in the exp2
        domain with the padding slots at -inf, the online softmax, O += p v (each selected unit's index is loaded a
        block ahead); the normalised O goes back into the query half's buffer for the producer to store. A second
        half without tokens computes nothing: it only releases its key blocks."""
        pid = gl.program_id(0)
        nprog = gl.num_programs(0)
        for half in range(c, 2 * ((n_tiles - pid + nprog - 1) // nprog), 3):
            i = half // 2
            qi = i % QB
            tile = pid + i * nprog
            qh = q_bufs.index(2 * qi + half % 2)
            q_origin, q_rows, q_cols = _unit(tile % G, H, W, GH, GW, WH, WW)  # q_origin unused
            n_busy = N_SEL * ((half % 2 == 0) | _has_second_half(q_rows, q_cols, WW)).to(gl.int32)
            u = gl.load(UNITS + tile * N_SEL)
            m = gl.full([64], float("-inf"), gl.float32, ROW_S)
            rowsum = gl.zeros([64], gl.float32, ROW_S)
            o = gl.zeros([64, 64], gl.float32, O_LAYOUT)
            # Slots from WH * WW on hold no unit's token. Which slots a register holds is known at compile time where
            # it does not hang on the lane (for 9x12 units: slots 112-127), so those registers get no scaling and no
            # exponential: an eighth fewer per block.
            no_unit = gl.arange(0, 128, layout=COL_S) >= WH * WW
            mbarrier.wait(q_ready.index(qi), (i // QB) & 1)
            for j in range(n_busy):
                n = i * N_SEL + j
                origin, rows, cols = _unit(u, H, W, GH, GW, WH, WW)
                _, valid = _slot_tokens(origin, rows, cols, gl.arange(0, 128, layout=COL_S), W, WH, WW)
                u = gl.load(UNITS + tile * N_SEL + gl.minimum(j + 1, N_SEL - 1))
                mbarrier.wait(kv_ready.index(n % NS), (n // NS) & 1)
                fence_async_shared()
                s = warpgroup_mma(qh, k_bufs.index(n % NS).permute((1, 0)), gl.zeros([64, 128], gl.float32, S_LAYOUT),
                                  use_acc=False)
                s = gl.where(no_unit[None, :], float("-inf"),
                             s * qk_scale + gl.where(valid, 0.0, float("-inf"))[None, :])
                m_new = gl.maximum(m, gl.max(s, 1))
                alpha = gl.exp2(m - m_new)
                p = gl.where(no_unit[None, :], -0.0, gl.exp2(s - m_new[:, None]))  # -0.0: x + -0.0 folds to x
                rowsum = rowsum * alpha + gl.sum(p, 1)
                m = m_new
                o = o * gl.convert_layout(alpha, ROW_O)[:, None]
                o = warpgroup_mma(gl.convert_layout(p.to(v_bufs.dtype), P_LAYOUT), v_bufs.index(n % NS), o)
                mbarrier.arrive(kv_empty.index(n % NS), count=1)
            for j in range(n_busy, N_SEL):  # skipped blocks are released once they are in, keeping the phases
                n = i * N_SEL + j
                mbarrier.wait(kv_ready.index(n % NS), (n // NS) & 1)
                mbarrier.arrive(kv_empty.index(n % NS), count=1)
            qh.store((o * gl.convert_layout(1.0 / rowsum, ROW_O)[:, None]).to(qh.dtype))
            _barrier()
            mbarrier.arrive(q_empty.index(qi), count=1)

    @gluon.jit
    def _sparse_local_fwd(Q, K, V, Out, UNITS, n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob,
                          soh, sol, qk_scale, G: gl.constexpr, H: gl.constexpr, W: gl.constexpr, GH: gl.constexpr,
                          GW: gl.constexpr, WH: gl.constexpr, WW: gl.constexpr, N_SEL: gl.constexpr,
                          QB: gl.constexpr, NS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                          PRODUCER_REGS: gl.constexpr, CHUNK: gl.constexpr):
        smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        q_bufs = gl.allocate_shared_memory(Q.dtype.element_ty, [2 * QB, 64, 64], smem)
        k_bufs = gl.allocate_shared_memory(K.dtype.element_ty, [NS, 128, 64], smem)
        v_bufs = gl.allocate_shared_memory(V.dtype.element_ty, [NS, 128, 64], smem)
        q_ready = gl.allocate_shared_memory(gl.int64, [QB, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [QB, 1], mbarrier.MBarrierLayout())
        kv_ready = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(QB):
            mbarrier.init(q_ready.index(i), count=128)  # every producer thread, once its copies land
            mbarrier.init(q_empty.index(i), count=2)  # the two consumers of the tile's halves
        for i in gl.static_range(NS):
            mbarrier.init(kv_ready.index(i), count=128)
            mbarrier.init(kv_empty.index(i), count=2)
        # Partition arguments are spelled out: Gluon takes no tuple built by concatenation here.
        gl.warp_specialize([
            (_consumer, (0, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, qk_scale,
                         G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_consumer, (1, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, qk_scale,
                         G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_consumer, (2, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty, n_tiles, qk_scale,
                         G, H, W, GH, GW, WH, WW, N_SEL, NS, QB)),
            (_producer, (Q, K, V, Out, UNITS, q_bufs, k_bufs, v_bufs, q_ready, q_empty, kv_ready, kv_empty,
                         n_tiles, HEADS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol, G, H, W, GH,
                         GW, WH, WW, N_SEL, NS, QB, CHUNK)),
        ], [4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])
