"""Attention variants: masks (who sees whom), every backend against the dense masked reference, gradients."""

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from gvr.errors import ConfigError, InputError
from gvr.models import attention as A
from gvr.models import attention_kernels as K

ODD_GRIDS = [(3, 5, 7), (2, 10, 13), (1, 9, 12)]


def qkv(grid, B=2, heads=3, D=8, dtype=torch.float64, device="cpu", requires_grad=False):
    L = grid[0] * grid[1] * grid[2]
    return [torch.randn(B, heads, L, D, dtype=dtype, device=device, requires_grad=requires_grad) for _ in range(3)]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(autouse=True)
def _auto_backend():
    A.set_backend("auto")
    yield
    A.set_backend("auto")


# ---------------------------------------------------------------------------------------------
# Masks: who sees whom
# ---------------------------------------------------------------------------------------------


def unit_lengths(ids):
    return torch.bincount(ids).tolist()


@pytest.mark.parametrize("T, shift, frames", [
    (20, False, [5, 5, 5, 5]),
    (20, True, [2, 5, 5, 5, 3]),  # paper Fig. 8
    (5, False, [5]),
    (5, True, [2, 3]),
    (7, True, [2, 5]),
])
def test_temporal_units_hold_whole_frames_paper_layout(T, shift, frames):
    grid = (T, 2, 3)
    ids = A.temporal_unit_ids(grid, unit=5, shift=shift)
    assert unit_lengths(ids) == [f * 6 for f in frames]
    assert torch.equal(ids.view(T, 6), ids.view(T, 6)[:, :1].expand(T, 6))  # a frame never splits


def test_window_mask_one_axis_truncated_and_shifted_without_wraparound():
    grid = (1, 1, 7)
    plain = A.window_mask(grid, (1, 1, 4), shift=False).int()
    shifted = A.window_mask(grid, (1, 1, 4), shift=True).int()
    groups = lambda mask: sorted({tuple(torch.nonzero(row).flatten().tolist()) for row in mask})  # noqa: E731
    assert groups(plain) == [(0, 1, 2, 3), (4, 5, 6)]
    assert groups(shifted) == [(0, 1), (2, 3, 4, 5), (6,)]  # first and last tokens never share a window


@pytest.mark.parametrize("shift", [False, True])
def test_window_mask_is_product_of_axis_partitions(shift):
    grid, window = (4, 6, 5), (3, 4, 2)
    mask = A.window_mask(grid, window, shift)
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).view(-1, 3)
    expected = torch.ones_like(mask)
    for axis, w in enumerate(window):
        pad = (w - w // 2) % w if shift else 0
        tile = (coords[:, axis] + pad) // w
        expected &= tile[:, None] == tile[None, :]
    assert torch.equal(mask, expected)
    assert torch.equal(mask, mask.T) and bool(mask.diagonal().all())


def test_sparse_local_units_tile_each_frame_with_smaller_edge_units():
    grid = (2, 10, 13)
    ids = A.unit_ids(grid, (4, 5))
    assert A.num_units(grid, (4, 5)) == int(ids.max()) + 1 == 2 * 3 * 3
    sizes = torch.bincount(ids).view(2, 3, 3)
    assert sizes[0].tolist() == [[20, 20, 12], [20, 20, 12], [10, 10, 6]]
    assert torch.equal(sizes[0], sizes[1])


def naive_selection(q, k, grid, window, topk):
    """Loop version of the paper's rule, in float64."""
    ids = A.unit_ids(grid, window)
    G = int(ids.max()) + 1
    B, n = q.shape[:2]
    out = torch.empty(B, n, G, 1 + topk, dtype=torch.long)
    for b in range(B):
        for h in range(n):
            qm = torch.stack([q[b, h, ids == g].double().mean(0) for g in range(G)])
            km = torch.stack([k[b, h, ids == g].double().mean(0) for g in range(G)])
            for g in range(G):
                scores = {c: float(qm[g] @ km[c]) for c in range(G) if c != g}
                out[b, h, g] = torch.tensor([g] + sorted(scores, key=scores.get, reverse=True)[:topk])
    return out


@pytest.mark.parametrize("topk", [1, 3])
def test_select_units_matches_mean_query_mean_key_rule(topk):
    grid, window = (2, 7, 9), (3, 4)
    q, k, _ = qkv(grid, dtype=torch.float32)
    units = A.select_units(q, k, grid, window, topk)
    assert units.shape == (2, 3, A.num_units(grid, window), 1 + topk)
    assert torch.equal(units[..., 0], torch.arange(units.shape[2]).expand_as(units[..., 0]))  # own unit first
    expected = naive_selection(q, k, grid, window, topk)
    assert torch.equal(units[..., 1:].sort(-1).values, expected[..., 1:].sort(-1).values)  # order is free


def test_selection_is_per_head():
    grid, window = (2, 6, 6), (3, 3)
    q, k, _ = qkv(grid, B=1, heads=8)
    units = A.select_units(q, k, grid, window, 1)
    assert len({tuple(units[0, h, :, 1].tolist()) for h in range(8)}) > 1


def test_sparse_local_mask_sees_own_unit_and_exactly_the_selected_units():
    grid, window = (2, 7, 9), (3, 4)
    q, k, _ = qkv(grid)
    units = A.select_units(q, k, grid, window, 2)
    mask = A.sparse_local_mask(grid, window, units)
    ids = A.unit_ids(grid, window)
    for b, h, i in [(0, 0, 0), (1, 2, 40), (0, 1, 125)]:
        seen = set(ids[mask[b, h, i]].tolist())
        assert seen == set(units[b, h, ids[i]].tolist())
        assert bool(mask[b, h, i, ids == ids[i]].all())  # every key of its own unit


def test_topk_is_capped_and_then_equals_full_attention():
    grid, window = (2, 5, 6), (3, 4)
    q, k, v = qkv(grid)
    units = A.select_units(q, k, grid, window, topk=100)
    assert units.shape[-1] == A.num_units(grid, window)
    out = A.sparse_local_attention(q, k, v, grid, window, topk=100)
    assert torch.allclose(out, A.masked_attention(q, k, v), atol=1e-10)


def test_whole_grid_tiles_equal_full_attention():
    grid = (3, 4, 5)
    q, k, v = qkv(grid)
    full = A.masked_attention(q, k, v)
    assert torch.allclose(A.temporal_unit_attention(q, k, v, grid, unit=3), full, atol=1e-10)
    assert torch.allclose(A.window_attention(q, k, v, grid, (3, 4, 5)), full, atol=1e-10)
    assert not torch.allclose(A.window_attention(q, k, v, grid, (3, 4, 5), shift=True), full, atol=1e-3)


@pytest.mark.parametrize("grid, tile, shifts", [((3, 5, 7), (2, 3, 4), (True, True, True)),
                                                ((2, 10, 13), (1, 9, 12), (False, False, False))])
def test_tiled_layout_round_trips(grid, tile, shifts):
    t = A.tiling(grid, tile, shifts, torch.device("cpu"), 16)
    x = qkv(grid)[0]
    tiles = A.to_tiles(x, t)
    assert t.size % 16 == 0 and int(t.valid.sum()) == x.shape[2]
    assert torch.equal(A.from_tiles(tiles, t), x)
    assert bool((tiles.view(2, 3, t.groups, t.size, -1)[:, :, ~t.valid] == 0).all())  # padding is zero
    ids = A.tile_ids(grid, tile, shifts)
    assert torch.equal(t.pos // t.size, ids)  # a tile's tokens land in that tile


# ---------------------------------------------------------------------------------------------
# Each function equals dense attention under its mask (default backend: sdpa on CPU)
# ---------------------------------------------------------------------------------------------


def variants(grid):
    """(name, fast call, mask) for every attention variant on a grid."""
    return [
        ("full", lambda q, k, v: A.full_attention(q, k, v), None),
        ("temporal", lambda q, k, v: A.temporal_unit_attention(q, k, v, grid, 2), A.temporal_unit_mask(grid, 2)),
        ("temporal-shift", lambda q, k, v: A.temporal_unit_attention(q, k, v, grid, 2, True),
         A.temporal_unit_mask(grid, 2, True)),
        ("window", lambda q, k, v: A.window_attention(q, k, v, grid, (2, 4, 3)), A.window_mask(grid, (2, 4, 3))),
        ("window-shift", lambda q, k, v: A.window_attention(q, k, v, grid, (2, 4, 3), True),
         A.window_mask(grid, (2, 4, 3), True)),
    ]


@pytest.mark.parametrize("grid", ODD_GRIDS)
def test_variants_equal_masked_reference(grid):
    q, k, v = qkv(grid)
    for name, fast, mask in variants(grid):
        assert torch.allclose(fast(q, k, v), A.masked_attention(q, k, v, mask), atol=1e-10), name


@pytest.mark.parametrize("grid", ODD_GRIDS)
@pytest.mark.parametrize("window, topk", [((3, 4), 1), ((9, 12), 1), ((2, 5), 3), ((4, 4), 0)])
def test_sparse_local_equals_masked_reference(grid, window, topk):
    q, k, v = qkv(grid)
    units = A.select_units(q, k, grid, window, topk)
    ref = A.masked_attention(q, k, v, A.sparse_local_mask(grid, window, units))
    assert torch.allclose(A.sparse_local_attention(q, k, v, grid, window, topk), ref, atol=1e-10)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_low_precision_inputs(dtype, tol):
    grid = (3, 5, 7)
    q, k, v = qkv(grid, D=16, dtype=dtype)
    for name, fast, mask in variants(grid):
        out = fast(q, k, v)
        assert out.dtype == dtype and out.shape == q.shape
        assert rel_err(out, A.masked_attention(q.double(), k.double(), v.double(), mask)) < tol, name
    out = A.sparse_local_attention(q, k, v, grid, (2, 3), 2)
    units = A.select_units(q, k, grid, (2, 3), 2)
    ref = A.masked_attention(q.double(), k.double(), v.double(), A.sparse_local_mask(grid, (2, 3), units))
    assert rel_err(out, ref) < tol


def grads(fn, q, k, v):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out))
    return q.grad, k.grad, v.grad


def test_gradients_match_reference():
    grid = (3, 5, 7)
    q, k, v = qkv(grid)
    for name, fast, mask in variants(grid):
        for g, r in zip(grads(fast, q, k, v), grads(lambda *x, m=mask: A.masked_attention(*x, m), q, k, v)):
            assert torch.allclose(g, r, atol=1e-10), name
    units = A.select_units(q, k, grid, (2, 3), 2)
    mask = A.sparse_local_mask(grid, (2, 3), units)
    fast = lambda *x: A.sparse_local_attention(*x, grid, (2, 3), 2)  # noqa: E731
    for g, r in zip(grads(fast, q, k, v), grads(lambda *x: A.masked_attention(*x, mask), q, k, v)):
        assert torch.allclose(g, r, atol=1e-10)


def test_selection_is_not_differentiated_but_attention_is():
    grid = (2, 4, 6)
    q, k, v = qkv(grid, requires_grad=True)
    units = A.select_units(q, k, grid, (2, 3), 1)
    assert not units.requires_grad
    A.sparse_local_attention(q, k, v, grid, (2, 3), 1).sum().backward()
    assert all(x.grad is not None and bool(x.grad.abs().sum() > 0) for x in (q, k, v))


# ---------------------------------------------------------------------------------------------
# Backends and the dispatcher
# ---------------------------------------------------------------------------------------------


def test_dispatcher_routes_kinds_and_defaults():
    grid = (3, 10, 13)
    q, k, v = qkv(grid)
    assert torch.equal(A.attention(q, k, v, grid, "full"), A.full_attention(q, k, v))
    assert torch.equal(A.attention(q, k, v, grid, "temporal_unit", shift=True, unit=2),
                       A.temporal_unit_attention(q, k, v, grid, 2, True))
    assert torch.equal(A.attention(q, k, v, grid, "window", shift=True),
                       A.window_attention(q, k, v, grid, (1, 8, 8), True))
    assert torch.equal(A.attention(q, k, v, grid, "sparse_local", topk=2),
                       A.sparse_local_attention(q, k, v, grid, (9, 12), 2))
    with pytest.raises(ConfigError, match="kind"):
        A.attention(q, k, v, grid, "swin")


def test_bad_inputs_fail_with_clear_errors():
    q, k, v = qkv((2, 3, 4))
    with pytest.raises(InputError, match="grid"):
        A.window_attention(q, k, v, (2, 3, 5))
    with pytest.raises(InputError, match="shape"):
        A.full_attention(q, k[:, :, :-1], v)
    with pytest.raises(ConfigError, match="window"):
        A.window_attention(q, k, v, (2, 3, 4), (1, 0, 2))
    with pytest.raises(ConfigError, match="topk"):
        A.sparse_local_attention(q, k, v, (2, 3, 4), (2, 2), -1)


def test_backend_selection_is_scoped_and_validated():
    grid = (2, 5, 6)
    q, k, v = qkv(grid)
    with A.use_backend("reference"):
        assert A.get_backend() == "reference"
        out = A.window_attention(q, k, v, grid, (1, 2, 4), True)
    assert A.get_backend() == "auto"
    assert torch.allclose(out, A.window_attention(q, k, v, grid, (1, 2, 4), True), atol=1e-10)
    with pytest.raises(ConfigError, match="backend"):
        A.set_backend("cuda-magic")


@pytest.mark.skipif(K.flash_available(), reason="flash-attn is installed here")
def test_flash_backend_refuses_clearly_without_the_package():
    with pytest.raises(ConfigError, match="flash-attn"):
        A.set_backend("flash")


def test_flex_path_equals_reference_on_cpu():
    # unfused FlexAttention (CPU, forward only): checks the block mask and mask_mod built from the selection
    grid = (2, 5, 7)
    q, k, v = qkv(grid, B=1, heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        units = A.select_units(q, k, grid, (2, 3), 2)
        out = A._sparse_local_with_units(q, k, v, grid, (2, 3), units, "flex")
        with A.use_backend("flex"):
            win = A.window_attention(q, k, v, grid, (2, 2, 3), True)
    assert torch.allclose(out, A.masked_attention(q, k, v, A.sparse_local_mask(grid, (2, 3), units)), atol=1e-10)
    assert torch.allclose(win, A.masked_attention(q, k, v, A.window_mask(grid, (2, 2, 3), True)), atol=1e-10)


def test_flex_block_mask_lists_exactly_the_selected_tiles():
    grid, window = (2, 6, 10), (3, 4)
    q, k, _ = qkv(grid)
    units = A.select_units(q, k, grid, window, 2)
    t = A.tiling(grid, (1, *window), (False, False, False), torch.device("cpu"), K.FLEX_BLOCK)
    bm = K.tile_block_mask(units, t.valid, t.groups, t.size, backward=True)
    blocks = bm.to_dense()  # (B, heads, G, G) 0/1 per (query tile, key tile)
    expected = torch.zeros_like(blocks).scatter_(-1, units, 1)
    assert torch.equal(blocks, expected)
    assert_q_lists_match_torch(bm)


def assert_q_lists_match_torch(bm):
    """The backward's per-key-block lists equal torch's own (dense) transposition of the forward lists."""
    from torch.nn.attention.flex_attention import BlockMask

    for prefix in ("", "full_"):
        num, idx = getattr(bm, f"{prefix}kv_num_blocks"), getattr(bm, f"{prefix}kv_indices")
        if num is None:
            continue
        ref = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=bm.BLOCK_SIZE, seq_lengths=bm.seq_lengths)
        q_num, q_idx = getattr(bm, f"{prefix}q_num_blocks"), getattr(bm, f"{prefix}q_indices")
        assert torch.equal(q_num, ref.q_num_blocks)
        live = torch.arange(q_idx.shape[-1]) < q_num[..., None]
        assert torch.equal(q_idx[live], ref.q_indices[..., : q_idx.shape[-1]][live])


def test_flex_block_mask_skips_padding_blocks_and_marks_full_ones():
    # (1, 16, 16) windows on a 20 x 20 frame: 256-slot tiles of two 128-slot kernel blocks each
    grid, window = (1, 20, 20), (1, 16, 16)
    t = A.tiling(grid, window, (False, False, False), torch.device("cpu"), K.FLEX_BLOCK)
    assert (t.groups, t.size) == (4, 256)
    bm = K.tile_block_mask(None, t.valid, t.groups, t.size, backward=False)
    lists = lambda num, idx: [sorted(idx[0, 0, i, : num[0, 0, i]].tolist()) for i in range(8)]  # noqa: E731
    full, partial = lists(bm.full_kv_num_blocks, bm.full_kv_indices), lists(bm.kv_num_blocks, bm.kv_indices)
    assert full[:2] == [[0, 1], [0, 1]] and partial[:2] == [[], []]  # whole 16 x 16 tile: no mask_mod
    assert partial[2:4] == [[2, 3], [2, 3]]  # 16 x 4 tile: both blocks hold tokens
    assert partial[4:6] == [[4], [4]] and full[4:6] == [[], []]  # 4 x 16 tile: second block is all padding
    assert_q_lists_match_torch(K.tile_block_mask(None, t.valid, t.groups, t.size, backward=True))
    q, k, v = qkv(grid, B=1, heads=2)
    out = A.from_tiles(K.flex_tiles(*(A.to_tiles(x, t) for x in (q, k, v)), t), t)
    assert torch.allclose(out, A.masked_attention(q, k, v, A.window_mask(grid, window)), atol=1e-10)


@pytest.fixture
def fake_flash(monkeypatch):
    """A stand-in flash_attn module with flash-attn's layout, computing per sequence with SDPA."""
    def attend(q, k, v):  # (L, heads, D) each
        return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)

    def flash_attn_func(q, k, v):
        return torch.stack([attend(*x) for x in zip(q, k, v)])

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k):
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and int(cu_q[-1]) == q.shape[0]
        assert max_q == int((cu_q[1:] - cu_q[:-1]).max())
        spans = [slice(int(a), int(b)) for a, b in zip(cu_q[:-1], cu_q[1:])]
        return torch.cat([attend(q[s], k[s], v[s]) for s in spans])

    module = types.ModuleType("flash_attn")
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    module.__spec__ = types.SimpleNamespace(name="flash_attn")
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    K.flash_available.cache_clear()
    yield
    K.flash_available.cache_clear()


def test_flash_varlen_packing_equals_reference(fake_flash):
    grid = (3, 5, 7)
    q, k, v = qkv(grid)
    with A.use_backend("flash"):
        for name, fast, mask in variants(grid):
            assert torch.allclose(fast(q, k, v), A.masked_attention(q, k, v, mask), atol=1e-10), name


# ---------------------------------------------------------------------------------------------
# GPU: fast paths against the reference (run on the GPU machine with -m gpu)
# ---------------------------------------------------------------------------------------------

GPU_GRID = (5, 20, 30)


def gpu_variants(grid):
    """The CPU variants plus the DiT's Swin window, whose tiles span several kernel blocks."""
    swin = (5, 16, 16)
    return variants(grid) + [("swin-shift", lambda q, k, v: A.window_attention(q, k, v, grid, swin, True),
                              A.window_mask(grid, swin, True))]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["full", "temporal", "temporal-shift", "window", "window-shift", "swin-shift"])
def test_gpu_fast_paths_forward_backward_bf16(name):
    grid = GPU_GRID
    fast, mask = next((f, m) for n, f, m in gpu_variants(grid) if n == name)
    q, k, v = qkv(grid, B=2, heads=4, D=64, dtype=torch.bfloat16, device="cuda")
    mask = None if mask is None else mask.cuda()
    for g, r in zip(grads(fast, q, k, v), grads(lambda *x: A.masked_attention(*(y.float() for y in x), mask),
                                                 q, k, v)):
        assert rel_err(g, r) < 1e-2, name
    assert rel_err(fast(q, k, v), A.masked_attention(q.float(), k.float(), v.float(), mask)) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("window, topk, D", [((9, 12), 1, 64), ((9, 12), 3, 128), ((16, 16), 2, 64)])
def test_gpu_flex_sparse_local_forward_backward_bf16(window, topk, D):
    grid = GPU_GRID
    q, k, v = qkv(grid, B=2, heads=4, D=D, dtype=torch.bfloat16, device="cuda")
    units = A.select_units(q, k, grid, window, topk)
    mask = A.sparse_local_mask(grid, window, units)
    fast = lambda *x: A._sparse_local_with_units(*x, grid, window, units, "flex")  # noqa: E731
    ref = lambda *x: A.masked_attention(*(y.float() for y in x), mask)  # noqa: E731
    assert rel_err(fast(q, k, v), ref(q, k, v)) < 1e-2
    for g, r in zip(grads(fast, q, k, v), grads(ref, q, k, v)):
        assert rel_err(g, r) < 1e-2


@pytest.mark.gpu
def test_gpu_flex_compiles_once_per_shape():
    from torch._dynamo.utils import counters

    grid = GPU_GRID
    q, k, v = qkv(grid, B=1, heads=4, D=64, dtype=torch.bfloat16, device="cuda")
    A.sparse_local_attention(q, k, v, grid, (9, 12), 1)
    before = counters["stats"]["unique_graphs"]
    for _ in range(3):  # new inputs, new selection, new block mask: same compiled kernel
        q, k, v = qkv(grid, B=1, heads=4, D=64, dtype=torch.bfloat16, device="cuda")
        A.sparse_local_attention(q, k, v, grid, (9, 12), 1)
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.gpu
def test_gpu_selection_matches_cpu():
    grid, window = (2, 7, 9), (3, 4)
    q, k, _ = qkv(grid, dtype=torch.float32)
    assert torch.equal(A.select_units(q.cuda(), k.cuda(), grid, window, 2).cpu(),
                       A.select_units(q, k, grid, window, 2))
