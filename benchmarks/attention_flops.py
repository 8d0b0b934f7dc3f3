"""Paper Table 2 analogue: FLOPs of one SimpleGVR block at 17 frames with full, Swin and sparse local 3D attention.

Counted by hand (no GPU needed): 2 FLOPs per multiply-add of every linear layer and of both attention
products (q k^T and P v: 4 * d * pairs, with pairs the (query, key) pairs the mask allows, summed over
heads). Norms, RoPE, softmax and activations are left out, as in the paper's operator counts.

The block is the preset's block (gvr-1b by default): per-frame 2D self-attention, the 3D self-attention
being compared, text cross-attention over `--text-len` T5 tokens and the FFN. Only the 3D attention
changes between rows, so the table also gives that part alone (its projections plus its attention
products) and its products alone. Sparse local attention attends to its own unit plus `topk` others
chosen from the data; the count takes each chosen unit at the average size of the other units (edge
units are smaller) and adds the selection itself (unit-mean scores: 2 * G^2 * d). The paper's
Table 2 (arXiv v1) reports 1612.5 / 452.6 / 377.1 GFLOPs for full / Swin / sparse local; its model
width and token count are not given, so the absolute numbers differ and the reductions are the
comparable part.

    python benchmarks/attention_flops.py   # -> benchmarks/results/attention-flops.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch

from gvr.models.attention import unit_ids, window_ids
from gvr.models.presets import PRESETS

G = 1e9


def pairs_full(grid) -> float:
    L = grid[0] * grid[1] * grid[2]
    return float(L) ** 2


def pairs_window(grid, window, shift: bool = False) -> float:
    sizes = torch.bincount(window_ids(grid, window, shift)).double()
    return float((sizes**2).sum())


def pairs_sparse_local(grid, window, topk: int) -> float:
    """Own unit in full plus `topk` others, each at the mean size of the other units."""
    sizes = torch.bincount(unit_ids(grid, window)).double()
    others = (sizes.sum() - sizes) / (len(sizes) - 1)
    return float((sizes * (sizes + min(topk, len(sizes) - 1) * others)).sum())


def block_flops(grid, dim: int, ffn: int, text_len: int, pairs_3d: float, extra_3d: float = 0.0) -> dict:
    """FLOPs of one block, split by part, for a 3D attention with `pairs_3d` allowed pairs."""
    T, H, W = grid
    L = T * H * W
    proj = 8 * L * dim**2  # q, k, v and output projections of one self-attention
    core_3d = 4 * dim * pairs_3d + extra_3d
    parts = {
        "attention_2d": proj + 4 * dim * T * float(H * W) ** 2,
        "attention_3d": proj + core_3d,
        "cross_attention": 4 * L * dim**2 + 4 * text_len * dim**2 + 4 * dim * L * text_len,
        "ffn": 4 * L * dim * ffn,
    }
    return {"block": sum(parts.values()), "attention_3d_core": core_3d, **parts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gvr-1b", choices=list(PRESETS))
    parser.add_argument("--grid", default="5x68x120", help="T x H x W tokens (17 frames at 1080p)")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--topk", type=int, default=None, help="sparse local top-k (default: the preset's)")
    parser.add_argument("--out", default="benchmarks/results/attention-flops.json")
    args = parser.parse_args(argv)

    cfg = PRESETS[args.preset]
    grid = tuple(int(x) for x in args.grid.split("x"))
    topk = cfg.sparse_topk if args.topk is None else args.topk
    n_units = len(torch.bincount(unit_ids(grid, cfg.sparse_window)))
    rows = {
        "full": block_flops(grid, cfg.dim, cfg.ffn_dim, args.text_len, pairs_full(grid)),
        "swin": block_flops(grid, cfg.dim, cfg.ffn_dim, args.text_len, pairs_window(grid, cfg.attention_window)),
        "sparse_local": block_flops(grid, cfg.dim, cfg.ffn_dim, args.text_len,
                                    pairs_sparse_local(grid, cfg.sparse_window, topk),
                                    extra_3d=2 * n_units**2 * cfg.dim),
    }
    metrics = {}
    print(f"{args.preset}, grid {args.grid}, Swin window {cfg.attention_window}, "
          f"sparse unit {cfg.sparse_window} top-{topk}; GFLOPs (reduction vs full)")
    print(f"{'':14s}" + "".join(f"{part:>24s}" for part in ("block", "attention_3d", "attention_3d_core")))
    for name, row in rows.items():
        cells = []
        for part in ("block", "attention_3d", "attention_3d_core"):
            reduction = 100 * (1 - row[part] / rows["full"][part])
            metrics[f"{name}.{part}_gflops"] = round(row[part] / G, 2)
            metrics[f"{name}.{part}_reduction_pct"] = round(reduction, 2)
            cells.append(f"{row[part] / G:12.1f} ({reduction:5.1f}%)")
        for part in ("attention_2d", "cross_attention", "ffn"):
            metrics[f"{name}.{part}_gflops"] = round(row[part] / G, 2)
        print(f"{name:14s}" + "".join(f"{c:>24s}" for c in cells))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "attention-flops",
        "device": "none (analytic count)",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "command": shlex.join(["python", "benchmarks/attention_flops.py", *(argv if argv is not None else sys.argv[1:])]),
        "metrics": metrics,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
