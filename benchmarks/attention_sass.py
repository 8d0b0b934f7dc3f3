"""Instruction mix of the sparse local forward kernel's key-block loop, compiled for sm_90a without a GPU.

Compiles `gvr.models.attention_triton.forward` for Hopper with the installed Triton and its bundled
ptxas and nvdisasm. It prints:
- the number of SASS instructions per warp outside the key-block loop and per program;
- the number of SASS instructions per warp in one key block of the loop, by class (integer, float,
  exp2, tensor core, spills);
- the registers and stack ptxas gave it;
- whether ptxas serialised the wgmma instructions (its C7511/C7512 notes).

The strides, which the launcher's specialisation finds divisible by 16 at 1080p, are declared so here, as
they are at run time; the grid's sizes are compile-time constants, as in `Geometry.constants`.

    python benchmarks/attention_sass.py --head-dim 64 --warps 8 --block-n 128 --maxnreg 128
"""

from __future__ import annotations

import argparse
import collections
import inspect
import math
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from gvr.models import attention_triton as TK

CLASSES = {
    "int": {"IMAD", "LOP3", "ISETP", "SHF", "LEA", "IADD3", "SEL", "MOV", "IABS", "I2F", "F2I", "VIADD", "PLOP3",
            "SGXT", "PRMT"},
    "float": {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "F2FP"},
    "exp2": {"MUFU"},
    "wgmma": {"HGMMA"},
    "spill": {"LDL", "STL"},
}
DIVISIBLE = {"sqb", "sqh", "sql", "skb", "skh", "skl", "svb", "svh", "svl", "sob", "soh", "sol"}
POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "LSE": "*fp32", "UNITS": "*i32"}


def compile_forward(head_dim: int, n_sel: int, block_n: int, warps: int, stages: int, maxnreg: int,
                    full_width: bool, lse: bool = True):
    """The forward for 24 heads on the 77-frame 1080p grid (a width of 116 tokens when not `full_width`)."""
    grid = (20, 68, 120 if full_width else 116)
    geo = TK.Geometry(grid, (9, 12), head_dim)
    x = torch.empty(1, 24, math.prod(grid), head_dim, device="meta")
    names = list(inspect.signature(TK.forward.fn).parameters)
    consts = {**geo.constants(x), "N_SEL": n_sel, "SEL_P2": TK._pow2(n_sel), "BLOCK_M": geo.BLOCK,
              "BLOCK_N": block_n, "SPLIT": geo.BLOCK // block_n, "PRECISION": "tf32", "STORE_LSE": lse}
    signature = {n: "constexpr" if n in consts else POINTERS.get(n, "fp32" if n == "qk_scale" else "i32")
                 for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in DIVISIBLE or n in POINTERS}
    options = {"num_warps": warps, "num_stages": stages, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(ASTSource(TK.forward, signature, {n: consts[n] for n in consts if n in names}, attrs),
                          target=GPUTarget("cuda", 90, 32), options=options)


def tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def instructions(cubin: bytes) -> tuple[list[str], dict[str, int]]:
    """The kernel's SASS instructions in order and the position of each branch label."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
    instrs: list[str] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        ins = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if ins:
            instrs.append(ins.group(1).strip())
    return instrs, labels


def key_block_loop(instrs: list[str], labels: dict[str, int]) -> list[str]:
    """The longest backward branch's body: the loop over key blocks."""
    best = (0, -1)
    for i, ins in enumerate(instrs):
        m = re.search(r"BRA\s+(?:`\()?(\.L_x_\d+)", ins)
        if m and labels.get(m.group(1), i + 1) <= i and i - labels[m.group(1)] > best[1] - best[0]:
            best = (labels[m.group(1)], i)
    return instrs[best[0]:best[1] + 1]


def ptxas_notes(ptx: str) -> tuple[str, list[str]]:
    """ptxas's resource line and its notes on wgmma serialisation (from the first bundled ptxas that reads
    this PTX version: newer Triton releases ship a second one for Blackwell-era PTX)."""
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        for name in ("ptxas", "ptxas-blackwell"):
            if os.path.exists(tool(name)):
                out = subprocess.run([tool(name), "-v", "--gpu-name", "sm_90a", path, "-o", path + ".cubin"],
                                     capture_output=True, text=True)
                lines = (out.stdout + out.stderr).splitlines()
                if out.returncode == 0:
                    break
    used = next((line.split("Used", 1)[1].strip() for line in lines if "Used" in line), None)
    return used or "failed: " + " ".join(lines[:2]), [line.split(":", 1)[1].strip() for line in lines
                                                        if "wgmma" in line]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--topk", type=int, default=1)
    parser.add_argument("--block-n", type=int, default=None, help="key block (default: Geometry.launch's)")
    parser.add_argument("--warps", type=int, default=None)
    parser.add_argument("--stages", type=int, default=None)
    parser.add_argument("--maxnreg", type=int, default=None, help="0: no cap")
    parser.add_argument("--general", action="store_true", help="grid width not a multiple of the unit's")
    parser.add_argument("--inference", action="store_true", help="the forward without the log-sum-exp")
    args = parser.parse_args(argv)
    launch = TK.Geometry((20, 68, 120), (9, 12), args.head_dim).launch("forward")
    settings = {"block_n": args.block_n or launch["BLOCK_N"], "warps": args.warps or launch["num_warps"],
                "stages": args.stages or launch["num_stages"],
                "maxnreg": launch["maxnreg"] if args.maxnreg is None else args.maxnreg}
    kernel = compile_forward(args.head_dim, 1 + args.topk, full_width=not args.general, lse=not args.inference,
                             **settings)
    instrs, labels = instructions(kernel.asm["cubin"])
    loop = key_block_loop(instrs, labels)
    ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0] for ins in loop)
    by_class = {name: sum(ops[op] for op in members) for name, members in CLASSES.items()}
    used, notes = ptxas_notes(kernel.asm["ptx"])
    print(f"triton {triton.__version__}, sm_90a, head dim {args.head_dim}, {settings}, "
          f"{'general' if args.general else 'full-width'} grid{', inference' if args.inference else ''}")
    print(f"ptxas: {used}")
    for note in notes:
        print(f"ptxas: {note}")
    blocks = (1 + args.topk) * (128 // settings["block_n"])
    print(f"whole kernel: {len(instrs) - len(loop)} instructions per warp outside the key-block loop, "
          f"{len(instrs) - len(loop) + blocks * len(loop)} per program with its {blocks} key blocks")
    print(f"key-block loop: {len(loop)} instructions per warp: " + ", ".join(f"{k} {v}" for k, v in by_class.items()))
    print("by opcode: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))


if __name__ == "__main__":
    main()
