"""Held-out evaluation: sample HR latents, decode, score against references and baselines.

For each clip of the held-out pair set (`degrade.sets` with `split: holdout`):
- model: the pipeline samples an HR latent from the stored LR latent (`evaluate.steps` Euler steps,
  fixed LR noise level `evaluate.noise_aug`), then the codec decodes it;
- codec ceiling: the codec's own reconstruction of the HR reference (what a perfect latent gives);
- baselines: `bilinear` upsamples the LR clip in pixel space to the HR size.
Outputs under `{root}/eval/`: metrics.json (flat, for DVC and the promotion rule), per_clip.csv,
a per-clip PSNR plot, and side-by-side sample videos.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from gvr.config import Params
from gvr.errors import InputError
from gvr.io.storage import join
from gvr.io.video import to_frames
from gvr.layout import EVAL_SET, Layout

log = logging.getLogger(__name__)


def bilinear_baseline(lr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel-space bilinear upsampling of a uint8 (T, h, w, 3) clip to `size` (H, W)."""
    x = torch.from_numpy(lr).permute(0, 3, 1, 2).float()
    y = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()




def eval_set(params: Params) -> str:
    holdout = [n for n, s in params.degrade.sets.items() if s.split == "holdout"]
    if not holdout:
        raise InputError("degrade.sets has no `split: holdout` set to evaluate on")
    return EVAL_SET if EVAL_SET in holdout else holdout[0]


def evaluate_model(params: Params, model_dir: str, out_dir: str) -> dict[str, float]:
    """Score the model in `model_dir` on the held-out clips; write reports to `out_dir`."""
    import pandas as pd

    from gvr.eval.metrics import compute
    from gvr.io.storage import atomic_local, write_json
    from gvr.pipeline import GVRPipeline
    from gvr.runtime import pick_device, torch_dtype

    ep = params.evaluate
    device = pick_device(params.compute.device)
    dtype = torch_dtype(params.compute.dtype, device)
    pipe = GVRPipeline.from_pretrained(_local_model(params, model_dir), device=device, dtype=dtype)
    names = list(ep.metrics)
    iqa = _iqa_scorers(params, names, device)
    rows, samples = [], []
    from tqdm.auto import tqdm

    from gvr.data.shards import count_pairs, iter_pairs

    set_dir = Layout.of(params).pairs(eval_set(params))
    total = min(count_pairs(set_dir, params.storage), ep.max_clips)
    for clip_id, t in tqdm(iter_pairs(set_dir, params.storage, limit=ep.max_clips), total=total, desc="evaluate",
                           unit="clip"):
        if "hr_video" not in t:
            raise InputError(f"{set_dir}: held-out pairs without reference pixels (set split: holdout)")
        hr, lr = t["hr_video"].numpy(), t["lr_video"].numpy()
        size = hr.shape[1:3]
        c0 = t["c0"].float().unsqueeze(0).to(device)
        text = (t["text"].float().unsqueeze(0).to(device), t["text_mask"].bool().unsqueeze(0).to(device))

        # 1. the model: sample an HR latent, then decode it (timed separately)
        start = time.perf_counter()
        z = pipe(lr_latent=c0, hr_size=size, text_emb=text[0], text_mask=text[1], steps=ep.steps,
                 noise_aug=ep.noise_aug, guidance=ep.guidance, seed=ep.seed, decode=False).latent
        _sync(device)
        sample_s = time.perf_counter() - start
        start = time.perf_counter()
        out = to_frames(pipe.codec.decode(z.to(pipe.codec.device, pipe.codec.dtype), frames=len(hr))[0])
        _sync(device)
        decode_s = time.perf_counter() - start

        # 2. references: codec ceiling and baselines
        z0 = t["z0"].unsqueeze(0).to(pipe.codec.device, pipe.codec.dtype)
        ceiling = to_frames(pipe.codec.decode(z0, frames=len(hr))[0])
        row = {"clip": clip_id, "sample_s": sample_s, "decode_s": decode_s}
        row.update(compute(names, out, hr, iqa=iqa))
        row.update({f"codec_{k}": v for k, v in compute([n for n in names if n in ("psnr", "ssim")],
                                                        ceiling, hr).items()})
        baselines = {}
        for b in ep.baselines:
            if b != "bilinear":
                raise InputError(f"evaluate.baselines: unknown baseline {b!r} (known: bilinear)")
            baselines[b] = bilinear_baseline(lr, size)
            row.update({f"{b}_{k}": v for k, v in compute(names, baselines[b], hr, iqa=iqa).items()})
        rows.append(row)
        if len(samples) < 3:
            samples.append((clip_id, baselines.get("bilinear", bilinear_baseline(lr, size)), out, hr))
    if not rows:
        raise InputError("evaluate: the held-out set has no clips (too few accepted videos?)")

    table = pd.DataFrame(rows)
    metrics = {k: float(table[k].mean()) for k in table.columns if k != "clip"}
    metrics["clips"] = float(len(table))
    with atomic_local(join(out_dir, "per_clip.csv"), params.storage) as tmp:
        table.to_csv(tmp, index=False)
    _plot(table, out_dir, params)
    _write_samples(samples, out_dir, params)
    write_json(join(out_dir, "metrics.json"), metrics, params.storage)
    return metrics


def _iqa_scorers(params: Params, names: list[str], device: torch.device) -> dict:
    """No-reference metrics by name: clip -> mean score over `evaluate.iqa_frames` uniform frames."""
    from gvr.eval.iqa import load_iqa
    from gvr.io.video import uniform_indices

    scorers, n = {}, params.evaluate.iqa_frames
    for name in names:
        if name in ("psnr", "ssim", "warp_error"):
            continue
        weights = params.evaluate.iqa_weights.get(name) or (params.curate.musiq_weights if name == "musiq" else None)
        metric = load_iqa(name, weights, device=device)
        scorers[name] = lambda clip, m=metric: float(m.score_frames(clip[uniform_indices(len(clip), n)]).mean())
    return scorers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _local_model(params: Params, model_dir: str) -> str:
    from gvr.io.storage import local_dir

    return local_dir(model_dir, params.storage)


def _plot(table, out_dir: str, params: Params) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gvr.io.storage import atomic_local

    fig, ax = plt.subplots(figsize=(max(4, len(table) * 0.5 + 2), 3))
    x = np.arange(len(table))
    metric = "psnr" if "psnr" in table else next(c for c in table.columns if c not in ("clip", "sample_s", "decode_s"))
    cols = [c for c in (metric, f"bilinear_{metric}", f"codec_{metric}") if c in table]
    for i, c in enumerate(cols):
        ax.bar(x + (i - (len(cols) - 1) / 2) * 0.25, table[c], width=0.25, label=c)
    ax.set_xticks(x, table["clip"], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("PSNR (dB)" if metric == "psnr" else metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_local(join(out_dir, "psnr_per_clip.png"), params.storage) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _write_samples(samples: list[tuple[str, Any, Any, Any]], out_dir: str, params: Params) -> None:
    """Side-by-side mp4s: bilinear | model | reference."""
    from gvr.io.video import write_video

    for i, (_, base, out, ref) in enumerate(samples):
        write_video(join(out_dir, "samples", f"sample_{i}.mp4"), np.concatenate([base, out, ref], axis=2),
                    fps=params.upscale.fps, storage=params.storage)
