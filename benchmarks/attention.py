"""Attention benchmark on one CUDA GPU: dense SDPA vs temporal units vs Swin windows vs sparse local attention.

Token grids 5x68x120 and 20x68x120 (17 and 77 frames at 1080p after the 8x VAE and 2x2 patches), heads
12x128 and 24x64, bf16, batch 1, forward and forward+backward. Each case runs through the public
function with the backend `attention()` would pick (`--backend` forces one); times are medians of
CUDA-event timings (`triton.testing.do_bench`, L2 flushed between runs), compile time excluded.

Per case: `ms`, `speedup_vs_sdpa` (dense SDPA on the same grid, heads and mode) and `effective_tflops`:
4 * D * (query, key) pairs the mask allows, summed over heads, per second (x3.5 for forward+backward,
flash-attention's convention); padding and skipped work do not count. Sparse local attention is also
split into `select_ms` (unit means, scores, top-k, and for FlexAttention the BlockMask), `layout_ms`
(FlexAttention only: tiling q, k, v and untiling the output; the Triton kernels read tokens in place),
`kernel_ms` (the attention kernel alone, as inference runs it: on Hopper at head dim 64 the Gluon kernel;
`triton_kernel_ms` the Triton kernel), with `selection_overhead` = select_ms / (layout_ms +
kernel_ms), the attention work it enables, and `kernel_effective_tflops`. On the Triton path it also
times the DiT's RoPE pass over q and k with and without the unit means it can yield, and whole
layers (rotation, selection, attention); `fused_selection_overhead` is the selection's share of the
kernel when the means come from that pass (`triton_breakdown`).

    python benchmarks/attention.py   # -> benchmarks/results/attention-<device>.json
    python benchmarks/attention.py --profile sparse_local_top1 --grids 20x68x120 --heads 24x64  # kernel table
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gvr.models import attention as A
from gvr.models import attention_kernels as K

SWIN_WINDOW = (5, 16, 16)  # the DiT's Swin window (gvr.models.presets.DiTConfig.attention_window)
UNIT_WINDOW = (9, 12)
CASES = ("sdpa", "temporal_unit", "temporal_unit_shift", "window", "window_shift",
         "sparse_local_top1", "sparse_local_top3", "sparse_local_top7")
GOAL = "sparse_local_top1.20x68x120.24x64"


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("x"))


def case_call(case: str, grid):
    """The attention call of a case, and its mask's token-group sizes (None: sparse, data-dependent)."""
    if case == "sdpa":
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), torch.tensor([math.prod(grid)])
    if case.startswith("temporal_unit"):
        shift = case.endswith("shift")
        return ((lambda q, k, v: A.temporal_unit_attention(q, k, v, grid, 5, shift)),
                torch.bincount(A.temporal_unit_ids(grid, 5, shift)))
    if case.startswith("window"):
        shift = case.endswith("shift")
        return ((lambda q, k, v: A.window_attention(q, k, v, grid, SWIN_WINDOW, shift)),
                torch.bincount(A.window_ids(grid, SWIN_WINDOW, shift)))
    topk = int(case.removeprefix("sparse_local_top"))
    return (lambda q, k, v: A.sparse_local_attention(q, k, v, grid, UNIT_WINDOW, topk)), None


def attended_pairs(sizes: torch.Tensor | None, q, k, grid, case: str) -> float:
    """(query, key) pairs the mask allows, summed over batch and heads."""
    B, heads = q.shape[:2]
    if sizes is not None:
        return float((sizes.double() ** 2).sum()) * B * heads
    units = A.select_units(q, k, grid, UNIT_WINDOW, int(case.removeprefix("sparse_local_top")))
    unit_sizes = torch.bincount(A.unit_ids(grid, UNIT_WINDOW, q.device)).double()
    return float((unit_sizes[None, None, :] * unit_sizes[units].sum(-1)).sum())


def timer(fn, inputs, backward: bool) -> float:
    """Median milliseconds of fn() (plus its backward) over CUDA events."""
    from triton.testing import do_bench

    if backward:
        out = fn()
        grad = torch.randn_like(out)

        def run():
            fn().backward(grad)
    else:
        def run():
            with torch.no_grad():
                fn()
    run()  # compile and autotune outside the timed region
    torch.cuda.synchronize()
    return do_bench(run, warmup=50, rep=300, grad_to_none=list(inputs) if backward else None,
                    return_mode="median")


def sparse_breakdown(q, k, v, grid, topk: int, backend: str) -> dict[str, float]:
    """Forward sparse local attention split into selection, layout and kernel, on the given backend."""
    with A.use_backend(backend):
        backend = A._choose("sparse_local", q, UNIT_WINDOW[0] * UNIT_WINDOW[1])
    if backend == "triton":
        return triton_breakdown(q, k, v, grid, topk)
    return flex_breakdown(q, k, v, grid, topk)


def triton_breakdown(q, k, v, grid, topk: int) -> dict[str, float]:
    """The Triton path reads tokens in place: unit means, the pick, then one kernel; no layout pass.

    In the DiT, q and k arrive unrotated with their RoPE table, and the rotation pass, tiled by units, also
    yields the unit means (`attention(..., rope=)`). `rope_ms` is that rotation without means (the DiT's
    other layers), `rope_means_ms` with them, `rope_torch_ms` the plain torch rotation they replace;
    `fused_select_ms` = what the means add to the rotation + the pick, and `fused_selection_overhead` its
    share of the kernel. `read_qk_ms` is torch reading q and k once (two sums), the floor of a standalone
    selection, which must read both for the means; `read_qk_overhead` its share of the kernel. `layer_ms` / `layer_unfused_ms`: rotation, selection and attention together, with
    the means from the rotation pass / from a pass of their own."""
    from gvr.models import attention_triton as TK
    from gvr.models.rope import apply_rope, rope_table

    units = TK.select_units(q, k, grid, UNIT_WINDOW, topk)
    geo = TK.Geometry(grid, UNIT_WINDOW, q.shape[-1])
    rope = rope_table(grid, q.shape[-1], 10000.0, q.device)
    qm, km = TK.unit_means(q, k, grid, UNIT_WINDOW)
    with torch.no_grad():
        parts = {
            "means_ms": timer(lambda: TK.unit_means(q, k, grid, UNIT_WINDOW), (), False),
            "read_qk_ms": timer(lambda: (q.sum(dtype=torch.float32), k.sum(dtype=torch.float32)), (), False),
            "select_ms": timer(lambda: TK.select_units(q, k, grid, UNIT_WINDOW, topk), (), False),
            "pick_ms": timer(lambda: TK.select_from_means(qm, km, topk), (), False),
            "layout_ms": 0.0,
            "kernel_ms": timer(lambda: TK.inference_forward(q, k, v, units, geo), (), False),  # Gluon on Hopper
            "triton_kernel_ms": timer(lambda: TK._forward(q, k, v, units, geo, lse=False), (), False),
            "rope_torch_ms": timer(lambda: (apply_rope(q, rope), apply_rope(k, rope)), (), False),
            "rope_ms": timer(lambda: TK.rope(q, k, rope), (), False),
            "rope_means_ms": timer(lambda: TK.rope_with_means(q, k, rope, grid, UNIT_WINDOW), (), False),
            "layer_ms": timer(lambda: A.attention(q, k, v, grid, "sparse_local", window=UNIT_WINDOW, topk=topk,
                                                  rope=rope), (), False),
            "layer_unfused_ms": timer(lambda: A.sparse_local_attention(*TK.rope(q, k, rope), v, grid, UNIT_WINDOW,
                                                                       topk), (), False),
        }
    parts["fused_select_ms"] = max(parts["rope_means_ms"] - parts["rope_ms"], 0.0) + parts["pick_ms"]
    parts["fused_selection_overhead"] = parts["fused_select_ms"] / parts["kernel_ms"]
    parts["read_qk_overhead"] = parts["read_qk_ms"] / parts["kernel_ms"]
    return parts


def flex_breakdown(q, k, v, grid, topk: int) -> dict[str, float]:
    """FlexAttention path; its unit means come out of the pass that tiles q and k (`means_ms` is what they add)."""
    t = A.tiling(grid, (1, *UNIT_WINDOW), (False, False, False), q.device, K.flex_multiple(q.device))
    tiles = [A.to_tiles(x, t) for x in (q, k, v)]
    qm, km = A.tiles_and_means(q, t)[1], A.tiles_and_means(k, t)[1]
    units = A._select_from_means(qm, km, topk)
    block_mask = K.tile_block_mask(units, t.valid, t.groups, t.size, backward=False)
    flex, options = K._compiled_flex(), K._kernel_options(q.shape[-1])

    def pick():
        return K.tile_block_mask(A._select_from_means(qm, km, topk), t.valid, t.groups, t.size, backward=False)

    with torch.no_grad():
        tile_qk = timer(lambda: [A.to_tiles(x, t) for x in (q, k)], (), False)
        parts = {
            "means_ms": max(timer(lambda: [A.tiles_and_means(x, t) for x in (q, k)], (), False) - tile_qk, 0.0),
            "pick_ms": timer(pick, (), False),
            "layout_ms": timer(lambda: ([A.to_tiles(x, t) for x in (q, k, v)], A.from_tiles(tiles[0], t)), (), False),
            "kernel_ms": timer(lambda: flex(*tiles, block_mask=block_mask, kernel_options=options), (), False),
        }
    parts["select_ms"] = parts["means_ms"] + parts["pick_ms"]
    return parts


def bench_config(grid, heads: int, D: int, modes, cases, backend: str) -> dict[str, float]:
    """All cases and modes on one grid and head layout."""
    metrics: dict[str, float] = {}
    g, h = "x".join(map(str, grid)), f"{heads}x{D}"
    q, k, v = (torch.randn(1, heads, math.prod(grid), D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    for mode in modes:
        backward = mode == "fwdbwd"
        for case in cases:
            fn, sizes = case_call(case, grid)
            with A.use_backend(backend):
                ms = timer(lambda: fn(q, k, v), (q, k, v), backward)  # noqa: B023 (called before fn changes)
            flops = 4 * D * attended_pairs(sizes, q.detach(), k.detach(), grid, case)
            flops *= 3.5 if backward else 1.0
            key = f"{case}.{g}.{h}.{mode}"
            metrics[f"{key}.ms"] = ms
            metrics[f"{key}.speedup_vs_sdpa"] = metrics[f"sdpa.{g}.{h}.{mode}.ms"] / ms
            metrics[f"{key}.effective_tflops"] = flops / ms / 1e9
            if case.startswith("sparse_local") and not backward and backend in ("auto", "triton", "flex"):
                parts = sparse_breakdown(q.detach(), k.detach(), v.detach(), grid,
                                         int(case.removeprefix("sparse_local_top")), backend)
                metrics.update({f"{key}.{name}": value for name, value in parts.items()})
                metrics[f"{key}.selection_overhead"] = parts["select_ms"] / (parts["layout_ms"] + parts["kernel_ms"])
                metrics[f"{key}.kernel_effective_tflops"] = flops / parts["kernel_ms"] / 1e9
            print(f"{key:52s} {ms:9.3f} ms  x{metrics[f'{key}.speedup_vs_sdpa']:7.1f}  "
                  f"{metrics[f'{key}.effective_tflops']:7.1f} TFLOP/s", flush=True)
    return metrics


def profile(case: str, grid, heads: int, D: int, backend: str) -> None:
    """Print the CUDA kernels of one forward and one forward+backward call of a case."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn, _ = case_call(case, grid)
    q, k, v = (torch.randn(1, heads, math.prod(grid), D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    with A.use_backend(backend):
        for mode in ("fwd", "fwdbwd"):
            timer(lambda: fn(q, k, v), (q, k, v), mode == "fwdbwd")  # compile first
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    if mode == "fwd":
                        with torch.no_grad():
                            fn(q, k, v)
                    else:
                        fn(q, k, v).sum().backward()
                torch.cuda.synchronize()
            print(f"--- {case} {mode}, 3 calls")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="5x68x120,20x68x120")
    parser.add_argument("--heads", default="12x128,24x64", help="heads x head dim, comma separated")
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--backend", default="auto", choices=A.BACKENDS)
    parser.add_argument("--profile", default=None, metavar="CASE", help="print a kernel table for one case instead")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/attention-<device>.json)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/attention.py needs a CUDA GPU")

    if args.profile:
        heads, D = parse_shape(args.heads.split(",")[0])
        profile(args.profile, parse_shape(args.grids.split(",")[0]), heads, D, args.backend)
        return
    cases = args.cases.split(",")
    if "sdpa" not in cases:
        cases = ["sdpa", *cases]  # every speedup is relative to it
    device = torch.cuda.get_device_name()
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = Path(args.out or f"benchmarks/results/attention-{slug}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/attention.py", *(argv if argv is not None else sys.argv[1:])])
    metrics: dict[str, float] = {}
    for grid in (parse_shape(g) for g in args.grids.split(",")):
        for heads, D in (parse_shape(h) for h in args.heads.split(",")):
            metrics.update(bench_config(grid, heads, D, args.modes.split(","), cases, args.backend))
            torch.cuda.empty_cache()
            write_result(out, device, command, metrics)  # after every layout: a cut-short run keeps its numbers
    print(f"wrote {out}")


def write_result(out: Path, device: str, command: str, metrics: dict[str, float]) -> None:
    """The result file of DESIGN.md section 5, with the goal case's figures repeated under `goal.`."""
    goal = {f"goal.{name}": metrics[f"{GOAL}.fwd.{name}"]
            for name in ("speedup_vs_sdpa", "effective_tflops", "selection_overhead", "fused_selection_overhead",
                         "kernel_effective_tflops")
            if f"{GOAL}.fwd.{name}" in metrics}
    result = {
        "benchmark": "attention",
        "device": device,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "metrics": {name: round(value, 4) for name, value in {**goal, **metrics}.items()},
    }
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
