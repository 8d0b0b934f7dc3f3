"""SimpleGVR size and forward FLOPs per 1080p sample: FLOP counter vs. a count by hand.

One forward of the velocity model on a 17- or 77-frame clip: HR 1088x1920 px (latent 136x240, 68x120
tokens), LR 384x672 px (latent 48x84), a 512-token T5 prompt, batch 1. A 50-step sample costs 50
forwards (100 with classifier-free guidance).

Counter: `torch.utils.flop_counter.FlopCounterMode`. The whole model runs on the meta device (no
weights, no arithmetic) with full 3D attention. The other 3D attention kinds choose their tiles from
data, which meta tensors cannot do, so their attention is counted on the CPU, one layer at a time,
with one head of width 8 on the real token grid, and scaled by dim / 8 (attention FLOPs are linear in
heads x head_dim); that replaces the full 3D attention in the totals. The counter sees what the SDPA
path computes, padded tiles included (sparse-local units at the frame edges are padded to 9x12).

By hand: 2 FLOPs per multiply-add of every linear layer, convolution and attention product
(q k^T and attention x v: 4 L_q L_k d per attention, keys exactly as the mask allows). Neither count
includes norms, RoPE, softmax, activations or the bilinear resize.

    python benchmarks/model_flops.py --preset gvr-1b --out benchmarks/results/model-flops-gvr-1b.json

With `--measure` (CUDA), it also times one bf16 forward per case (random weights, median of a few
after a warm-up) and one training step (forward + backward, activation checkpointing) on 17 frames,
and reports achieved TFLOP/s against the counted FLOPs and the peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gvr.models.attention import attention, tile_ids
from gvr.models.dit import SimpleGVR
from gvr.models.presets import PRESETS, DiTConfig

HR_PX, LR_PX, TEXT_LEN = (1088, 1920), (384, 672), 512
KINDS = ("full", "temporal_unit", "window", "sparse_local")
G = 1e9


# --------------------------------------------------------------------------------------------
# By hand
# --------------------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, voxels: int) -> int:
    return 2 * cin * cout * k**3 * voxels


def upsampler_flops(cfg: DiTConfig, t: int, lr: tuple[int, int], hr: tuple[int, int]) -> int:
    """The four residual blocks of the latent upsampler (two at LR, time-expanding; two at HR)."""
    c, m, r = cfg.latent_channels, cfg.upsampler_channels, cfg.temporal_factor
    lr_vox, hr_vox = t * math.prod(lr), t * math.prod(hr)
    expand = conv(c, m, 3, lr_vox) + conv(m, m, 3, lr_vox) + conv(c, m, 1, lr_vox)  # channels
    expand += conv(m, m, 3, lr_vox) + conv(m, r * m, 3, lr_vox) + conv(m, r * m, 1, lr_vox)  # time x r
    reduce = conv(r * m, m, 3, hr_vox) + conv(m, m, 3, hr_vox) + conv(r * m, m, 1, hr_vox)  # fold time
    reduce += conv(m, c, 3, hr_vox) + conv(c, c, 3, hr_vox) + conv(m, c, 1, hr_vox)  # channels
    return expand + reduce


def tile_sizes(grid, tile, shifts) -> list[int]:
    return torch.bincount(tile_ids(grid, tile, shifts)).tolist()


def attention3d_by_hand(cfg: DiTConfig, grid, kind: str) -> int:
    """3D attention products of all blocks; temporal units and windows shift on odd blocks."""
    d, t, h, w = cfg.dim, *grid
    per_parity = []
    for shift in (False, True):
        if kind == "full":
            sizes = [t * h * w]
        elif kind == "temporal_unit":
            sizes = tile_sizes(grid, (cfg.attention_unit, h, w), (shift, False, False))
        elif kind == "window":
            sizes = tile_sizes(grid, cfg.attention_window, (shift,) * 3)
        else:  # each unit: its own tokens and topk other units (taken as full units); + unit selection
            units = tile_sizes(grid, (1, *cfg.sparse_window), (False,) * 3)
            full_unit = math.prod(cfg.sparse_window)
            per_parity.append(sum(4 * s * (s + cfg.sparse_topk * full_unit) * d for s in units)
                              + 2 * len(units) ** 2 * d)
            continue
        per_parity.append(sum(4 * s * s * d for s in sizes))
    even, odd = (cfg.depth + 1) // 2, cfg.depth // 2
    return even * per_parity[0] + odd * per_parity[1]


def by_hand(cfg: DiTConfig, frames: int, kind: str) -> dict[str, int]:
    """FLOPs of one forward by layer family."""
    c, d, f, n, pv = cfg.latent_channels, cfg.dim, cfg.ffn_dim, cfg.depth, math.prod(cfg.patch)
    t = (frames - 1) // cfg.temporal_factor + 1
    hr = tuple(s // 8 for s in HR_PX)
    lr = tuple(s // 8 for s in LR_PX)
    grid = (t // cfg.patch[0], hr[0] // cfg.patch[1], hr[1] // cfg.patch[2])
    tokens, per_frame = math.prod(grid), grid[1] * grid[2]
    n_mod = 9 if cfg.spatial_attention else 6
    self_attn_linear = 2 * tokens * d * 3 * d + 2 * tokens * d * d
    block_linear = (self_attn_linear * (2 if cfg.spatial_attention else 1)
                    + 2 * tokens * d * d * 2 + 2 * TEXT_LEN * d * 2 * d  # cross q, out; k, v over text
                    + 2 * tokens * d * f * 2)  # FFN
    linear = (n * block_linear + 2 * tokens * 2 * c * pv * d  # patch embedding of [z_t, c]
              + 2 * TEXT_LEN * (cfg.text_dim * d + d * d)  # text projection
              + 2 * 2 * (cfg.freq_dim * d + d * d) + 2 * d * n_mod * d  # t, t_c embeddings, time proj
              + 2 * tokens * d * pv * c)  # head
    return {
        "linear": linear,
        "conv": upsampler_flops(cfg, t, lr, hr) if cfg.upsampler == "upsampler" else 0,
        "attention_3d": attention3d_by_hand(cfg, grid, kind),
        "attention_2d": n * grid[0] * 4 * per_frame**2 * d if cfg.spatial_attention else 0,
        "attention_cross": n * 4 * tokens * TEXT_LEN * d,
    }


# --------------------------------------------------------------------------------------------
# Counter
# --------------------------------------------------------------------------------------------


def counted_full(model: SimpleGVR, frames: int) -> dict[str, int]:
    """Counter over the whole model on the meta device, full 3D attention, split by layer family."""
    cfg = model.cfg
    t = (frames - 1) // cfg.temporal_factor + 1
    with torch.device("meta"):
        z = torch.empty(1, cfg.latent_channels, t, HR_PX[0] // 8, HR_PX[1] // 8)
        c = torch.empty(1, cfg.latent_channels, t, LR_PX[0] // 8, LR_PX[1] // 8)
        text, tt = torch.empty(1, TEXT_LEN, cfg.text_dim), torch.empty(1)
    model.set_attention("full")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(z, tt, c, tt, text)
    out = {"linear": 0, "conv": 0, "attention_3d": 0, "attention_2d": 0, "attention_cross": 0}
    for module, ops in counter.get_flop_counts().items():
        if module.count(".") != 3 or ".blocks." not in module:  # only leaf-level block modules below
            continue
        part = module.rsplit(".", 1)[1]
        mm = sum(v for op, v in ops.items() if "bmm" in str(op) or "attention" in str(op))
        key = {"attn3d": "attention_3d", "attn2d": "attention_2d", "cross": "attention_cross"}.get(part)
        if key:
            out[key] += mm
    total = counter.get_total_flops()
    glob = counter.get_flop_counts()["Global"]
    out["conv"] = sum(v for op, v in glob.items() if "convolution" in str(op))
    out["linear"] = total - out["conv"] - out["attention_3d"] - out["attention_2d"] - out["attention_cross"]
    return out


def counted_attention3d(cfg: DiTConfig, frames: int, kind: str) -> int:
    """Counter over one layer of each shift parity on the CPU, one head of width 8, scaled to the model."""
    t = (frames - 1) // cfg.temporal_factor + 1
    grid = (t // cfg.patch[0], HR_PX[0] // 8 // cfg.patch[1], HR_PX[1] // 8 // cfg.patch[2])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, math.prod(grid), 8, generator=g) for _ in range(3))
    opts = {"temporal_unit": {"unit": cfg.attention_unit}, "window": {"window": cfg.attention_window},
            "sparse_local": {"window": cfg.sparse_window, "topk": cfg.sparse_topk}}.get(kind, {})
    per_parity = []
    for shift in (False, True):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            attention(q, k, v, grid, kind, shift=shift and kind in ("temporal_unit", "window"), **opts)
        per_parity.append(counter.get_total_flops() * cfg.dim // 8)
    return (cfg.depth + 1) // 2 * per_parity[0] + cfg.depth // 2 * per_parity[1]


def param_counts(model: SimpleGVR) -> dict[str, int]:
    """Parameters by part."""
    count = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0] if not name.startswith("blocks.") else "blocks." + name.split(".")[2]
        count[part] = count.get(part, 0) + p.numel()
    count["total"] = sum(p.numel() for p in model.parameters())
    return count


def run(preset: str) -> dict:
    cfg = dataclasses.replace(PRESETS[preset], checkpointing=False)
    with torch.device("meta"):
        model = SimpleGVR(cfg)
    metrics = {f"params_{k}": v for k, v in param_counts(model).items()}
    for frames in (17, 77):
        counted = counted_full(model, frames)
        for kind in KINDS:
            hand = by_hand(cfg, frames, kind)
            cnt = dict(counted)
            if kind != "full":
                cnt["attention_3d"] = counted_attention3d(cfg, frames, kind)
            tag = f"f{frames}_{kind}"
            for name, parts in (("counter", cnt), ("hand", hand)):
                total = sum(parts.values())
                metrics[f"{tag}_{name}_gflops"] = round(total / G, 1)
                for part, v in parts.items():
                    metrics[f"{tag}_{name}_{part}_gflops"] = round(v / G, 1)
            total = sum(cnt.values())
            attn = cnt["attention_3d"] + cnt["attention_2d"] + cnt["attention_cross"]
            metrics[f"{tag}_attention_share"] = round(attn / total, 4)
            metrics[f"{tag}_linear_share"] = round(cnt["linear"] / total, 4)
            metrics[f"{tag}_conv_share"] = round(cnt["conv"] / total, 4)
            metrics[f"{tag}_counter_vs_hand"] = round(total / sum(hand.values()), 4)
            metrics[f"{tag}_sample50_tflops"] = round(50 * total / 1e12, 1)
            print(f"{preset} {frames:>2}f {kind:<13} counter {total / 1e12:8.2f} TFLOP  "
                  f"hand {sum(hand.values()) / 1e12:8.2f}  attention {attn / total:6.1%}  "
                  f"linear {cnt['linear'] / total:6.1%}  conv {cnt['conv'] / total:5.1%}", flush=True)
    return metrics


def measure(preset: str, metrics: dict, reps: int = 3) -> None:
    """CUDA bf16 wall time of each counted case; achieved TFLOP/s = counted FLOPs / time."""
    import time

    device = torch.device("cuda")
    cfg = dataclasses.replace(PRESETS[preset], checkpointing=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = SimpleGVR(cfg).to(torch.bfloat16)
    for p in model.parameters():  # a fresh model has zero gates; random weights exercise every path
        torch.nn.init.normal_(p, std=0.02)

    def inputs(frames):
        t = (frames - 1) // cfg.temporal_factor + 1
        g = torch.Generator(device).manual_seed(0)
        return (torch.randn(1, cfg.latent_channels, t, HR_PX[0] // 8, HR_PX[1] // 8, device=device, generator=g),
                torch.rand(1, device=device, generator=g),
                torch.randn(1, cfg.latent_channels, t, LR_PX[0] // 8, LR_PX[1] // 8, device=device, generator=g),
                torch.rand(1, device=device, generator=g),
                torch.randn(1, TEXT_LEN, cfg.text_dim, device=device, generator=g))

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(reps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    for frames in (17, 77):
        x = inputs(frames)
        for kind in KINDS:
            model.set_attention(kind)
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                sec = timed(lambda x=x: model(*x))
            tag = f"f{frames}_{kind}"
            flops = metrics[f"{tag}_counter_gflops"] * G
            metrics[f"{tag}_forward_s"] = round(sec, 3)
            metrics[f"{tag}_forward_tflops_per_s"] = round(flops / sec / 1e12, 1)
            metrics[f"{tag}_forward_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            print(f"{preset} {frames:>2}f {kind:<13} forward {sec:7.3f} s  {flops / sec / 1e12:6.1f} TFLOP/s  "
                  f"peak {metrics[f'{tag}_forward_peak_gib']} GiB", flush=True)
    model.set_attention("full")
    x = inputs(17)
    torch.cuda.reset_peak_memory_stats()
    sec = timed(lambda: model(*x).float().square().mean().backward())
    metrics["f17_full_train_step_s"] = round(sec, 3)
    metrics["f17_full_train_step_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(f"{preset} 17f train step (fwd+bwd, checkpointing) {sec:.3f} s, "
          f"peak {metrics['f17_full_train_step_peak_gib']} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gvr-1b", choices=sorted(PRESETS))
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--measure", action="store_true", help="also time bf16 forwards on CUDA")
    parser.add_argument("--counted", type=Path, default=None,
                        help="reuse the counts of this earlier result JSON instead of counting again")
    args = parser.parse_args()
    metrics = json.loads(args.counted.read_text())["metrics"] if args.counted else run(args.preset)
    device = "meta (FlopCounterMode) + cpu"
    if args.measure:
        measure(args.preset, metrics)
        device += f"; timings on {torch.cuda.get_device_name()}"
    result = {"benchmark": f"model-flops-{args.preset}", "device": device,
              "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "command": "python " + " ".join(["benchmarks/model_flops.py", *sys.argv[1:]]), "metrics": metrics}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
