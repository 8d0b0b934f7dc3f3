"""Launch settings of the Triton sparse local attention kernels: warps x pipeline stages, timed per kernel.

For each head layout and top-k on the 77-frame grid (20x68x120 tokens, 9x12 units, bf16), times the
forward kernel under every (query block BLOCK_M, key block BLOCK_N, num_warps, num_stages, maxnreg)
and the two backward kernels (dq; dk and dv) under every (num_warps, num_stages, maxnreg), with
`tflops` counted on the attended (query, key) pairs (4 * D per pair; x2.5 for the backward).
`maxnreg` caps the registers per thread (0: no cap), trading spills for programs per multiprocessor.
`Geometry.launch` holds the chosen settings.

    python benchmarks/attention_triton_tune.py --out benchmarks/results/attention-triton-tune-<device>.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import re
import sys
from pathlib import Path

import torch

from gvr.models import attention as A
from gvr.models import attention_triton as TK

WINDOW = (9, 12)


def bench(fn) -> float:
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="20x68x120")
    parser.add_argument("--heads", default="24x64,12x128")
    parser.add_argument("--topk", default="1,3")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--maxnreg", default="0,128")
    parser.add_argument("--blocks", default="128x64,128x32,128x128,64x64", help="forward BLOCK_MxBLOCK_N")
    parser.add_argument("--modes", default="fwd,bwd")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention_triton_tune.py needs a CUDA GPU")
    grid = tuple(int(x) for x in args.grid.split("x"))
    device = torch.cuda.get_device_name()
    metrics: dict[str, float] = {}
    default = TK.Geometry.launch
    warps, stages = [int(x) for x in args.warps.split(",")], [int(x) for x in args.stages.split(",")]
    caps = [int(x) for x in args.maxnreg.split(",")]
    blocks = [tuple(int(x) for x in b.split("x")) for b in args.blocks.split(",")]
    for heads, D in (tuple(int(x) for x in h.split("x")) for h in args.heads.split(",")):
        q, k, v, do = (torch.randn(1, heads, math.prod(grid), D, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        for topk in (int(t) for t in args.topk.split(",")):
            units = A.select_units(q, k, grid, WINDOW, topk).to(torch.int32).contiguous()
            sizes = torch.bincount(A.unit_ids(grid, WINDOW, q.device)).double()
            flops = 4 * D * float((sizes[None, None, :] * sizes[units.long()].sum(-1)).sum())
            geo = TK.Geometry(grid, WINDOW, D)
            o, lse = TK._forward(q, k, v, units, geo)
            grid_of = {"fwd": itertools.product(blocks, warps, stages, caps),
                       "bwd": itertools.product((None,), warps, stages, caps)}
            for mode in args.modes.split(","):
                for tile, w, st, cap in grid_of[mode]:
                    kernel = "forward" if mode == "fwd" else "backward"
                    setting = ({"num_warps": w, "num_stages": st} | ({"maxnreg": cap} if cap else {})
                               | (dict(zip(("BLOCK_M", "BLOCK_N"), tile)) if tile else {}))
                    TK.Geometry.launch = lambda self, name, k=kernel, s=setting: s if name == k else default(self, name)
                    key = f"{heads}x{D}.top{topk}.{mode}." + ".".join(f"{n}{v}" for n, v in setting.items())
                    try:
                        if mode == "fwd":
                            ms = bench(lambda: TK._forward(q, k, v, units, geo))  # noqa: B023
                        else:
                            ms = bench(lambda: TK._backward(do, q, k, v, o, lse, units, geo))  # noqa: B023
                    except Exception as error:  # a setting the compiler refuses (shared memory): skip it
                        print(f"{key}: {type(error).__name__}: {str(error)[:100]}", flush=True)
                        continue
                    finally:
                        TK.Geometry.launch = default
                    tflops = (1.0 if mode == "fwd" else 2.5) * flops / ms / 1e9
                    metrics |= {f"{key}.ms": ms, f"{key}.tflops": tflops}
                    print(f"{key:52s} {ms:7.3f} ms {tflops:6.1f} TFLOP/s", flush=True)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = Path(args.out or f"benchmarks/results/attention-triton-tune-{slug}.json")
    out.write_text(json.dumps({
        "benchmark": "attention_triton_tune", "device": device, "torch": torch.__version__,
        "triton": __import__("triton").__version__, "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "benchmarks/attention_triton_tune.py", *(argv or sys.argv[1:])]),
        "metrics": {name: round(value, 4) for name, value in metrics.items()},
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
