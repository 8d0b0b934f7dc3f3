"""Wan2.1 VAE encode/decode at 1080p: wall time and peak GPU memory, untiled and tiled at two tile sizes.

The VAE is diffusers' `AutoencoderKLWan` with its default config (the Wan2.1 VAE architecture)
and random weights in bf16, behind `gvr.models.vae.DiffusersCodec`, so the numbers include gvr's
tiling and blending. Peak memory is `torch.cuda.max_memory_allocated` over one call, weights,
input and output included. A case that runs out of memory is recorded under `failed`.

    python benchmarks/vae.py --out benchmarks/results/vae-h100.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from gvr.models.vae import DiffusersCodec, Tiling

GIB = 2**30


def smooth_video(frames: int, height: int, width: int, device) -> torch.Tensor:
    """Random but image-like content: coarse noise upsampled, in [-1, 1], bf16."""
    g = torch.Generator(device=device).manual_seed(0)
    coarse = torch.rand(1, 3, frames, height // 16, width // 16, generator=g, device=device) * 2 - 1
    return F.interpolate(coarse, size=(frames, height, width), mode="trilinear").to(torch.bfloat16)


def measure(fn, device: torch.device):
    """(seconds, peak GiB, result) of one synchronised call; peak is 0 off CUDA."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / GIB if cuda else 0.0, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[17, 77])
    parser.add_argument("--size", type=int, nargs=2, default=[1088, 1920], metavar=("H", "W"))
    parser.add_argument("--tiles", nargs="+", default=["32:8", "64:8"], help="tile_size:overlap in latent pixels")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip the cases left after this long")
    parser.add_argument("--device", default="cuda", help="cpu only to check the script on tiny sizes")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from diffusers import AutoencoderKLWan

    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = AutoencoderKLWan().to(device, torch.bfloat16)  # default config = the Wan2.1 VAE
    codec = DiffusersCodec("wan", vae, Tiling(False))
    tilings = {"untiled": Tiling(False)}
    for spec in args.tiles:
        size, overlap = (int(v) for v in spec.split(":"))
        tilings[f"tile{size}"] = Tiling(True, size, overlap)

    warm = min(128, *args.size)
    codec.encode(smooth_video(5, warm, warm, device))  # warm-up: kernels, cuDNN handles
    codec.decode(torch.randn(1, 16, 2, warm // 8, warm // 8, device=device, dtype=torch.bfloat16))

    result = {
        "benchmark": "vae",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "command": f"python benchmarks/vae.py --out benchmarks/results/{args.out.name}",
        "setup": {"model": "diffusers AutoencoderKLWan default config (Wan2.1 VAE), random weights, bf16",
                  "diffusers": importlib.metadata.version("diffusers"), "size": args.size, "tiles": {k: [t.size, t.overlap] for k, t in tilings.items() if t.enabled},
                  "weights_gib": round(sum(p.numel() * p.element_size() for p in vae.parameters()) / GIB, 3)},
        "metrics": {},
        "failed": [],
    }
    started = time.perf_counter()
    h, w = args.size
    for frames in args.frames:
        video = smooth_video(frames, h, w, device)
        latent = torch.randn(1, *codec.latent_shape(frames, h, w), device=device, dtype=torch.bfloat16)
        reference = {}
        # the tiled cases first: they are the goal, and the untiled ones may not fit
        for name in [*[k for k in tilings if k != "untiled"], "untiled"]:
            codec.tiling = tilings[name]
            for op, fn in (("decode", partial(codec.decode, latent)), ("encode", partial(codec.encode, video))):
                key = f"{op}_{frames}f_{name}"
                if time.perf_counter() - started > args.budget_s:
                    result["failed"].append(f"{key}: skipped, time budget spent")
                    continue
                try:
                    seconds, peak, out = measure(fn, device)
                except torch.OutOfMemoryError:
                    result["failed"].append(f"{key}: out of memory")
                    torch.cuda.empty_cache()
                    continue
                result["metrics"][f"{key}_s"] = round(seconds, 3)
                result["metrics"][f"{key}_peak_gib"] = round(peak, 3)
                reference.setdefault(op, {})[name] = out.float().cpu()
                del out
                torch.cuda.empty_cache()
                print(f"{key:28s} {seconds:8.2f} s {peak:8.2f} GiB", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
        # random weights see far past a tile, so this bounds what a trained VAE's tiling changes
        for op, outs in reference.items():
            for name, out in outs.items():
                if name != "untiled" and "untiled" in outs:
                    ref = outs["untiled"]
                    result["metrics"][f"{op}_{frames}f_{name}_rel_diff"] = round(
                        ((out - ref).norm() / ref.norm()).item(), 5)
        del reference
    longest = max(args.frames)
    peaks = [v for k, v in result["metrics"].items()
             if k.startswith(f"decode_{longest}f_tile") and k.endswith("_peak_gib")]
    if peaks:  # the goal: 77-frame 1080p decode under 20 GB (10^9 bytes) with tiling
        result["metrics"][f"decode_{longest}f_tiled_under_20gb"] = int(max(peaks) * GIB < 20e9)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=1))
    print("failed:", result["failed"])


if __name__ == "__main__":
    main()
