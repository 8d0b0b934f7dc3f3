"""The warp-specialised Gluon forward of sparse local attention (`gvr.models.attention_gluon`).

Without a GPU: which inputs it takes, and that it compiles for Hopper (sm_90a) with the installed Triton
within a multiprocessor's shared memory, its key-block loops free of register spills. On the GPU machine (`-m gpu`): its
output equals the Triton kernel's bit for bit, and the inference path takes it.
"""

import os
import subprocess

import pytest
import torch

from gvr.models import attention_gluon as AG

needs_gluon = pytest.mark.skipif(AG.gluon is None, reason="this Triton has no Gluon")


def x(*shape, dtype=torch.bfloat16, device="cpu"):
    return torch.randn(*shape, device=device).to(dtype)


@pytest.mark.parametrize("dtype, D, window, ok", [
    (torch.bfloat16, 64, (9, 12), True),  # the paper's units
    (torch.float16, 64, (11, 11), True),  # 121 slots, sides not powers of two
    (torch.bfloat16, 64, (8, 16), True),  # 128 slots
    (torch.bfloat16, 64, (8, 8), False),  # 64 slots: the Triton kernel's 64-slot blocks fit better
    (torch.bfloat16, 64, (16, 16), False),  # 256 slots: more than one key block
    (torch.bfloat16, 128, (9, 12), False),
    (torch.bfloat16, 48, (9, 12), False),
    (torch.float32, 64, (9, 12), False),
])
def test_fits_only_the_shapes_and_types_it_is_written_for(dtype, D, window, ok):
    q = x(1, 2, 108, D, dtype=dtype)
    assert AG.fits(q, q, q, window) is ok


def test_fits_neither_mixed_types_nor_unaligned_rows_nor_offsets_past_int32():
    q = x(1, 2, 108, 64)
    assert not AG.fits(q, q.half(), q, (9, 12))
    padded = x(1, 2, 108, 68)[..., :64]  # rows of 136 bytes: not all 16-byte aligned
    assert AG.fits(x(1, 2, 108, 72)[..., :64], q, q, (9, 12)) and not AG.fits(padded, q, q, (9, 12))
    assert not AG.fits(x(1, 2, 64, 108).transpose(2, 3), q, q, (9, 12))  # head dim not contiguous
    wide = torch.empty(0, dtype=torch.bfloat16, device="meta").as_strided((2, 2, 108, 64), (2**31, 2**30, 64, 1))
    assert not AG.fits(wide, wide, wide, (9, 12))


def test_not_supported_on_cpu_or_when_switched_off(monkeypatch):
    q = x(1, 2, 108, 64)
    assert not AG.supported(q, q, q, (9, 12))
    monkeypatch.setenv("GVR_GLUON", "0")
    assert not AG.supported(q, q, q, (9, 12))


COMPILE = """
import collections, inspect, json, os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from gvr.models import attention_gluon as AG

(T, H, W), (WH, WW), n_sel = json.loads(sys.argv[1])
consts = dict(G=T * -(-H // WH) * -(-W // WW), H=H, W=W, GH=-(-H // WH), GW=-(-W // WW), WH=WH, WW=WW, N_SEL=n_sel,
              QB=AG.QB, NS=AG.NS, CONSUMER_REGS=AG.CONSUMER_REGS, PRODUCER_REGS=AG.PRODUCER_REGS, CHUNK=AG.CHUNK)
names = list(inspect.signature(AG._sparse_local_fwd.fn).parameters)
pointers = {n: "*bf16" for n in ("Q", "K", "V", "Out")} | {"UNITS": "*i32"}
signature = {n: "constexpr" if n in consts else pointers.get(n, "fp32" if n == "qk_scale" else "i32") for n in names}
aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in pointers or n[0] == "s"}
kernel = triton.compile(GluonASTSource(AG._sparse_local_fwd, signature, consts, aligned),
                        target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
    cubin.write(kernel.asm["cubin"])
    cubin.flush()
    sass = subprocess.run([nvdisasm, "-c", cubin.name], capture_output=True, text=True, check=True).stdout
regs, spills, region = [], collections.Counter(), "launch"
lines = collections.defaultdict(list)  # region -> (is a wgmma, is a local-memory access) per instruction
for line in sass.splitlines():
    if "USETMAXREG" in line:
        region = f"{len(regs)}:{line.split()[-2]}"
        regs.append(region)
    spills[region] += "STL" in line or "LDL" in line
    lines[region].append(("HGMMA" in line, "STL" in line or "LDL" in line))
loop = {}  # local-memory accesses between a region's first and last wgmma: its key-block loop
for region, marks in lines.items():
    mma = [i for i, (is_mma, _) in enumerate(marks) if is_mma]
    loop[region] = sum(local for _, local in marks[mma[0]:mma[-1]]) if mma else 0
print(json.dumps({"shared": kernel.metadata.shared, "regs": regs, "spills": {k: v for k, v in spills.items() if v},
                  "loop_spills": {k: v for k, v in loop.items() if v}}))
"""


@needs_gluon
@pytest.mark.parametrize("grid, window, n_sel", [
    ((20, 68, 120), (9, 12), 2),  # the paper's 77 frames at 1080p, top-1: a last row of 5 x 12 units
    ((20, 72, 120), (9, 12), 2),  # no unit cut
    ((20, 68, 116), (9, 12), 4),  # a width that cuts units: each score's column is checked too
])
def test_compiles_for_hopper_within_shared_memory_without_spilling_in_the_block_loop(grid, window, n_sel):
    """For sm_90a with the installed Triton and its ptxas (no GPU needed; outside Triton's interpreter, which
    the CPU tests turn on): registers are set per partition (setmaxnreg), the ring fits a multiprocessor's
    shared memory, and no partition touches local memory in its key-block loop. Outside it Triton 3.9 keeps a
    few scalars in local memory (loaded once per query half); 3.6 keeps none."""
    import json
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE, json.dumps([grid, window, n_sel])], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["shared"] <= 227 * 1024
    assert result["regs"], "no per-partition register counts"
    assert not result["loop_spills"], result
    assert sum(result["spills"].values()) <= 24, result


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("grid, window, topk, B, heads, dtype", [
    ((5, 20, 36), (9, 12), 1, 2, 3, torch.bfloat16),  # width a multiple of the unit's
    ((5, 20, 30), (9, 12), 3, 1, 5, torch.bfloat16),  # units cut on the right
    ((4, 21, 33), (11, 11), 2, 2, 2, torch.float16),
    ((3, 16, 32), (8, 16), 7, 1, 4, torch.bfloat16),
    ((1, 9, 12), (9, 12), 0, 1, 1, torch.bfloat16),  # one tile: fewer tiles than programs
    ((20, 68, 120), (9, 12), 1, 1, 2, torch.bfloat16),  # the paper's 77 frames: many tiles a program
    ((3, 15, 28), (9, 12), 2, 1, 3, torch.bfloat16),  # 6 x 4 units: tokens in the first 64 slots only
    ((2, 6, 116), (9, 12), 1, 1, 2, torch.bfloat16),  # 6 x 8 units: the last token in slot 67
])
def test_gpu_equals_the_triton_kernel_bit_for_bit(grid, window, topk, B, heads, dtype):
    from gvr.models import attention_triton as TK

    L = grid[0] * grid[1] * grid[2]
    q, k, v = (x(B, heads, L, 64, dtype=dtype, device="cuda") for _ in range(3))
    assert AG.supported(q, k, v, window)
    units = TK.select_units(q, k, grid, window, topk).to(torch.int32).contiguous()
    geo = TK.Geometry(grid, window, 64)
    ref = TK._forward(q, k, v, units, geo, lse=False)[0]
    out = AG.forward(q, k, v, units, grid, window)
    assert torch.equal(out, ref)


@pytest.mark.gpu
def test_gpu_reads_strided_inputs_and_inference_takes_it(monkeypatch):
    """The DiT's q, k, v are (B, heads, L, D) views of (B, L, heads, D); without a gradient
    `attention_triton.sparse_local` runs the Gluon kernel, and with GVR_GLUON=0 the Triton one, alike."""
    from gvr.models import attention_triton as TK

    grid, window = (5, 20, 36), (9, 12)
    q, k, v = (x(2, 5 * 20 * 36, 4, 64, device="cuda").transpose(1, 2) for _ in range(3))
    units = TK.select_units(q, k, grid, window, 2)
    original, calls = AG.forward, []

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(AG, "forward", counted)
    with torch.no_grad():
        out = TK.sparse_local(q, k, v, grid, window, units)
        monkeypatch.setenv("GVR_GLUON", "0")
        ref = TK.sparse_local(q, k, v, grid, window, units)
    assert calls == [1]
    assert torch.equal(out, ref)
