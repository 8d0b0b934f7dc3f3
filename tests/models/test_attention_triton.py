"""The Triton sparse local attention kernels against the dense masked reference.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU): the
same kernel code, the same indexing and masking, only slower, so the grids here are small.
"""

import os

import pytest
import torch

from gvr.errors import ConfigError
from gvr.models import attention as A

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def qkv(grid, B=2, heads=2, D=16, dtype=torch.float32, requires_grad=True):
    L = grid[0] * grid[1] * grid[2]
    return [torch.randn(B, heads, L, D, dtype=dtype, device=DEVICE, requires_grad=requires_grad) for _ in range(3)]


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def fwd_bwd(fn, q, k, v, grad):
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), grad)]


def check_against_reference(TK, grid, window, topk, q, k, v, tol):
    units = A.select_units(q.detach(), k.detach(), grid, window, topk)
    mask = A.sparse_local_mask(grid, window, units)
    grad = torch.randn(q.shape, dtype=q.dtype, device=q.device)
    fast = fwd_bwd(lambda *x: TK.sparse_local(*x, grid, window, units), q, k, v, grad)
    ref = fwd_bwd(lambda *x: A.masked_attention(*(y.double() for y in x), mask), q, k, v, grad.double())
    for name, f, r in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert f.dtype == q.dtype and f.shape == r.shape
        assert rel_err(f, r) < tol, name
    with torch.no_grad():  # inference: the forward without the log-sum-exp, same output
        inferred = TK.sparse_local(q, k, v, grid, window, units)
    assert not inferred.requires_grad and rel_err(inferred, fast[0]) < 1e-6


@pytest.mark.parametrize("grid, window, topk", [
    ((2, 5, 7), (2, 3), 2),  # edge units cut on both axes
    ((3, 4, 6), (4, 6), 1),  # one whole unit per frame
    ((1, 7, 9), (3, 4), 0),  # own unit only: window attention on one frame
])
def test_forward_and_backward_equal_masked_reference_fp32(TK, grid, window, topk):
    check_against_reference(TK, grid, window, topk, *qkv(grid), tol=1e-5)


@pytest.mark.parametrize("blocks", [{"BLOCK_N": 16}, {"BLOCK_M": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}])
def test_units_split_into_two_kernel_blocks(TK, monkeypatch, blocks):
    """The forward may split query units over two programs and walk key units in halves; the result is the same."""
    default = TK.Geometry.launch
    monkeypatch.setattr(TK.Geometry, "launch", lambda self, kernel, *a: {**default(self, kernel, *a), **blocks}
                        if kernel == "forward" else default(self, kernel, *a))
    grid = (2, 5, 7)
    check_against_reference(TK, grid, (4, 7), 1, *qkv(grid), tol=1e-5)  # 28-token units in blocks of 32 -> 16


KIB = 1024


@pytest.mark.parametrize("head_dim, itemsize, smem, stages", [
    (64, 2, 228 * KIB, 3),  # H100/H200, bf16: 112 KiB a program, two share a multiprocessor
    (128, 2, 228 * KIB, 2),  # 64-slot key blocks of 128 channels: 128 KiB, one program
    (64, 4, 228 * KIB, 2),  # fp32 would need 224 KiB
    (32, 4, 228 * KIB, 3),
    (64, 2, 164 * KIB, 2),  # A100
    (64, 2, 100 * KIB, 2),  # L40S: three stages would not fit one program
    (64, 2, 0, 2),  # torch does not report it
])
def test_forward_takes_a_third_stage_only_where_two_programs_fit_shared_memory(TK, head_dim, itemsize, smem, stages):
    """A third stage of key and value blocks is worth it only if two programs still fit a multiprocessor;
    two stages (80 KiB at head dim 64 in bf16) fit every GPU the kernels target."""
    launch = TK.Geometry((20, 68, 120), (9, 12), head_dim).launch("forward", itemsize, smem)
    assert launch["num_stages"] == stages


def test_head_dim_and_unit_not_powers_of_two_and_batch_of_three(TK):
    grid = (2, 6, 5)
    check_against_reference(TK, grid, (3, 5), 1, *qkv(grid, B=3, heads=1, D=24), tol=1e-5)


def test_half_precision_within_its_tolerance(TK):
    """fp16 here: Triton's interpreter multiplies bf16 tiles as raw integers (bf16 runs in the GPU tests)."""
    grid = (2, 5, 7)
    check_against_reference(TK, grid, (2, 3), 1, *qkv(grid, dtype=torch.float16), tol=1e-2)


def test_reads_strided_inputs_in_place(TK):
    """The DiT hands over q, k, v as (B, heads, L, D) views of (B, L, heads, D): no copy is needed."""
    grid, window = (2, 4, 5), (2, 3)
    q, k, v = (torch.randn(2, 20 * 2, 3, 16, device=DEVICE).transpose(1, 2).requires_grad_() for _ in range(3))
    assert not q.is_contiguous()
    check_against_reference(TK, grid, window, 1, q, k, v, tol=1e-5)


def test_offsets_switch_to_int64_only_past_int32(TK):
    """Token offsets are int32 unless index * row stride can pass 2**31 (a long video in (B, L, heads, D))."""
    geo = TK.Geometry((20, 68, 120), (9, 12), 128)
    L = 20 * 68 * 120
    small = torch.empty(1, 24, L, 128, device="meta")
    wide = torch.empty(1, L, 24 * 16, 128, device="meta").transpose(1, 2)  # row stride 49152: 8.0e9 > 2**31
    assert geo.constants(small)["I64"] is False
    assert geo.constants(small, wide)["I64"] is True


def test_int64_offsets_give_the_same_result(TK, monkeypatch):
    default = TK.Geometry.constants
    monkeypatch.setattr(TK.Geometry, "constants", lambda self, *x: {**default(self, *x), "I64": True})
    grid = (2, 5, 7)
    check_against_reference(TK, grid, (2, 3), 2, *qkv(grid), tol=1e-5)


def test_unit_means_equal_pooled_means(TK):
    grid, window = (2, 7, 9), (3, 4)
    q, k, _ = qkv(grid, D=24, requires_grad=False)
    qm, km = TK.unit_means(q, k, grid, window)
    assert torch.allclose(qm, A.unit_means(q, grid, window), atol=1e-6)
    assert torch.allclose(km, A.unit_means(k, grid, window), atol=1e-6)


@pytest.mark.parametrize("grid, topk", [((4, 9, 24), 1), ((4, 9, 24), 3), ((2, 5, 7), 17), ((1, 3, 4), 1)])
def test_selection_equals_the_mean_query_mean_key_rule(TK, grid, topk):
    """The selection kernel (72 units: two blocks of 64 rows and of 64 candidates) agrees with `attention`'s,
    also where top-k is capped (18 units, all of them) and where there is nothing to choose from (1 unit)."""
    q, k, _ = qkv(grid, B=1, heads=2, D=16, requires_grad=False)
    window = (3, 4)
    units = TK.select_units(q, k, grid, window, topk)
    ref = A.select_units(q, k, grid, window, topk)
    assert units.dtype == torch.int32 and units.shape == ref.shape
    assert torch.equal(units[..., 0].long(), ref[..., 0])  # own unit first
    assert torch.equal(units[..., 1:].sort(-1).values.long(), ref[..., 1:].sort(-1).values)


def test_readers_list_every_query_unit_that_selected_each_key_unit(TK):
    G = 5
    units = torch.tensor([[[[0, 3], [1, 3], [2, 0], [3, 1], [4, 3]]]], device=DEVICE)  # (1, 1, G, 2)
    query, starts, counts = TK.readers(units, G)
    lists = [query[s: s + c].tolist() for s, c in zip(starts.tolist(), counts.tolist())]
    assert lists == [[0, 2], [1, 3], [2], [0, 1, 3, 4], [4]]


def test_dispatcher_routes_to_triton_and_selects_like_the_other_backends(TK):
    grid, window = (2, 5, 7), (2, 3)
    q, k, v = qkv(grid, requires_grad=False)
    with A.use_backend("triton"):
        out = A.sparse_local_attention(q, k, v, grid, window, 2)
    assert rel_err(out, A.sparse_local_attention(q, k, v, grid, window, 2)) < 1e-5  # sdpa on CPU
    if ON_GPU:
        assert A._choose("sparse_local", q.bfloat16(), 108) == "triton"
        assert A._choose("sparse_local", q.bfloat16(), 400) == "flex"  # a unit larger than one tile


def test_unusable_inputs_fail_with_one_clear_error(TK):
    grid = (1, 4, 4)
    q, k, v = qkv(grid, requires_grad=False)
    units = A.select_units(q, k, grid, (2, 2), 1)
    with pytest.raises(ConfigError, match="at most 256 tokens"):
        TK.sparse_local(q, k, v, grid, (16, 17), units)
    with pytest.raises(ConfigError, match="head dim"):
        TK.sparse_local(q.double(), k.double(), v.double(), grid, (2, 2), units)
    if not ON_GPU:
        os.environ.pop("TRITON_INTERPRET")
        try:
            with pytest.raises(ConfigError, match="CUDA"):
                TK.sparse_local(q, k, v, grid, (2, 2), units)
        finally:
            os.environ["TRITON_INTERPRET"] = "1"


# ---------------------------------------------------------------------------------------------
# GPU: the compiled kernels on the paper's unit and head sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("grid, window, topk, D", [
    ((5, 20, 30), (9, 12), 1, 64),  # units cut on the right: the forward checks each slot's column
    ((5, 20, 36), (9, 12), 2, 64),  # width a multiple of the unit's: a unit's tokens are a prefix of its slots
    ((5, 20, 36), (9, 12), 3, 128),
    ((5, 20, 30), (16, 16), 2, 64),
    ((5, 20, 30), (9, 12), 7, 48),
])
def test_gpu_forward_backward_bf16(TK, grid, window, topk, D):
    check_against_reference(TK, grid, window, topk, *qkv(grid, B=2, heads=4, D=D, dtype=torch.bfloat16), tol=1e-2)


@pytest.mark.gpu
def test_gpu_fp32_is_exact(TK):
    grid = (3, 20, 30)
    check_against_reference(TK, grid, (9, 12), 2, *qkv(grid, B=1, heads=2, D=64), tol=1e-5)
