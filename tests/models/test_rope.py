"""RoPE: the fused Triton rotation of q and k (and its unit means) against the torch reference.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py), as in test_attention_triton.
"""


import pytest
import torch

from gvr.errors import InputError
from gvr.models import attention as A
from gvr.models.rope import apply_rope, rope_table, rotate

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


def tables(grid, D):
    return tuple(x.to(DEVICE) for x in rope_table(grid, D, 10000.0, torch.device("cpu")))


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_fused_rotation_and_its_gradient_equal_the_torch_ops(TK):
    """Strided (B, heads, L, D) views of (B, L, heads, D), as the DiT hands them over; a head dim that is
    not a power of two; a length that is no multiple of the kernel's 64-token blocks."""
    grid, D = (2, 5, 7), 24
    rope = tables(grid, D)
    q, k = (torch.randn(2, 70, 3, D, device=DEVICE).transpose(1, 2).requires_grad_() for _ in range(2))
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    qr, kr = TK.rope(q, k, rope)
    ref_q, ref_k = apply_rope(q, rope), apply_rope(k, rope)
    assert qr.is_contiguous() and kr.is_contiguous()  # as the torch ops give them: SDPA's usual layout
    assert rel_err(qr, ref_q) < 1e-6 and rel_err(kr, ref_k) < 1e-6
    fused = torch.autograd.grad((qr, kr), (q, k), (gq, gk))
    ref = torch.autograd.grad((ref_q, ref_k), (q, k), (gq, gk))
    assert all(rel_err(f, r) < 1e-6 for f, r in zip(fused, ref))
    assert fused[0].stride() == q.stride()  # a gradient comes back in its tensor's layout...
    qkv = torch.randn(2, 70, 3, 2 * D, device=DEVICE).transpose(1, 2).requires_grad_()
    q_half = qkv[..., :D]  # ... unless that has gaps: then contiguous, not twice the memory
    dq = torch.autograd.grad(TK.rope(q_half, k, rope)[0].sum(), q_half)[0]
    assert dq.is_contiguous() and rel_err(dq, torch.autograd.grad(apply_rope(q_half, rope).sum(), q_half)[0]) < 1e-6


def test_only_one_output_used_still_gives_both_gradients(TK):
    grid, D = (1, 4, 4), 16
    q, k = (torch.randn(1, 2, 16, D, device=DEVICE, requires_grad=True) for _ in range(2))
    qr, _ = TK.rope(q, k, tables(grid, D))
    dq, dk = torch.autograd.grad(qr.sum(), (q, k), allow_unused=True)
    assert torch.allclose(dq, torch.autograd.grad(apply_rope(q, tables(grid, D)).sum(), q)[0], atol=1e-6)
    assert dk is None or not dk.any()


def test_rotation_by_units_yields_the_unit_means(TK):
    """Edge units cut on both axes, a head dim that is not a power of two; the means are those of the rotated
    q and k as stored."""
    grid, window, D = (2, 5, 7), (2, 3), 24
    rope = tables(grid, D)
    q, k = (torch.randn(2, 3, 70, D, device=DEVICE) for _ in range(2))
    qr, kr, qm, km = TK.rope_with_means(q, k, rope, grid, window)
    assert rel_err(qr, apply_rope(q, rope)) < 1e-6 and rel_err(kr, apply_rope(k, rope)) < 1e-6
    assert torch.allclose(qm, A.unit_means(qr, grid, window), atol=1e-6)
    assert torch.allclose(km, A.unit_means(kr, grid, window), atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)])
def test_rotated_sparse_local_attention_equals_the_masked_reference(TK, dtype, tol):
    """`attention(..., rope=)` on the Triton backend (means from the rotation pass) against dense masked
    attention of the rotated q and k, forward and backward. The selection is the one the rotation pass's means
    give (those means equal `unit_means` of the rotated q and k: the test above), so that a near-tie rounded
    the other way in the reference's float64 rotation cannot move a unit."""
    grid, window, topk, D = (2, 5, 7), (2, 3), 2, 16
    rope = tables(grid, D)
    q, k, v = (torch.randn(2, 2, 70, D, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    with A.use_backend("triton"):
        out = A.attention(q, k, v, grid, "sparse_local", window=window, topk=topk, rope=rope)
    fast = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    with torch.no_grad():
        units = TK.select_from_means(*TK.rope_with_means(q, k, rope, grid, window)[2:], topk)
    qr, kr = apply_rope(q.double(), rope), apply_rope(k.double(), rope)
    ref_out = A.masked_attention(qr, kr, v.double(), A.sparse_local_mask(grid, window, units.long()))
    ref = [ref_out, *torch.autograd.grad(ref_out, (q, k, v), grad.double())]
    for name, f, r in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert f.dtype == dtype and rel_err(f, r) < tol, name


@pytest.mark.parametrize("kind", ["full", "temporal_unit", "window", "sparse_local"])
def test_every_kind_rotates_first(kind):
    """On any backend, `rope=` is the same as rotating q and k before the call."""
    grid, D = (2, 4, 6), 16
    rope = tables(grid, D)
    q, k, v = (torch.randn(1, 2, 48, D, device=DEVICE) for _ in range(3))
    opts = {"window": (2, 3)} if kind == "sparse_local" else {"window": (1, 2, 3)} if kind == "window" else {}
    out = A.attention(q, k, v, grid, kind, unit=1, rope=rope, **opts)
    ref = A.attention(apply_rope(q, rope), apply_rope(k, rope), v, grid, kind, unit=1, **opts)
    assert rel_err(out, ref) < 1e-5


def test_a_table_that_does_not_fit_fails_with_one_clear_error():
    grid = (1, 2, 3)
    q = torch.randn(1, 1, 6, 8)
    with pytest.raises(InputError, match=r"RoPE table .* \(6, 4\)"):
        rotate(q, q, tables((1, 2, 2), 8))
    with pytest.raises(InputError, match="RoPE table"):
        A.attention(q, q, q, grid, "sparse_local", window=(1, 3), rope=tables(grid, 6))


@pytest.mark.gpu
@pytest.mark.parametrize("D", [64, 128])
def test_gpu_bf16_rotation_and_rotated_sparse_local(TK, D):
    grid, window = (3, 20, 36), (9, 12)
    rope = tables(grid, D)
    q, k, v = (torch.randn(2, 4, 2160, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    qr, kr, qm, km = TK.rope_with_means(q, k, rope, grid, window)
    assert rel_err(qr, apply_rope(q, rope)) < 1e-2 and rel_err(kr, apply_rope(k, rope)) < 1e-2
    assert rel_err(qm, A.unit_means(qr.float(), grid, window)) < 1e-2
    grad = torch.randn_like(q)
    out = A.attention(q, k, v, grid, "sparse_local", window=window, topk=2, rope=rope)
    fast = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    units = TK.select_from_means(qm, km, 2).long()
    rq, rk = apply_rope(q.double(), rope), apply_rope(k.double(), rope)
    ref_out = A.masked_attention(rq, rk, v.double(), A.sparse_local_mask(grid, window, units))
    ref = [ref_out, *torch.autograd.grad(ref_out, (q, k, v), grad.double())]
    for name, f, r in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert rel_err(f, r) < 1e-2, name
