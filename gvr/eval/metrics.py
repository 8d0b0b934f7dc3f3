"""Video quality metrics on uint8 (T, H, W, 3) RGB clips.

Full reference: `psnr`, `ssim` (Gaussian-window SSIM on luma, Wang et al. 2004 constants),
computed per frame and averaged. Temporal: `warp_error`, the flow warping error of Lai et al. 2018
(E_warp, the paper's temporal-consistency metric): frame t+1 is warped onto frame t with DIS
optical flow estimated on the reference clip, and the squared difference of the output clip is
averaged over non-occluded pixels (forward-backward flow check). No-reference learned metrics
(MUSIQ, CLIP-IQA, MANIQA, NIQE) come from `gvr.eval.iqa` when their weights are available.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gvr.errors import InputError


def _check_pair(out: np.ndarray, ref: np.ndarray) -> None:
    for name, x in (("output", out), ("reference", ref)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise InputError(f"{name} clip must be uint8 (T, H, W, 3), got {x.dtype} {x.shape}")
    if out.shape != ref.shape:
        raise InputError(f"output {out.shape} and reference {ref.shape} clips differ in shape")


def psnr(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean per-frame PSNR in dB (RGB, peak 255); identical frames count as 100 dB."""
    _check_pair(out, ref)
    diff = out.astype(np.float64) - ref.astype(np.float64)
    mse = (diff**2).reshape(len(out), -1).mean(axis=1)
    per_frame = np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)
    return float(per_frame.mean())


def _luma(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).double()
    return (0.299 * t[..., 0] + 0.587 * t[..., 1] + 0.114 * t[..., 2]).unsqueeze(1)  # (T, 1, H, W)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean per-frame SSIM on luma (11x11 Gaussian window, sigma 1.5, valid region)."""
    _check_pair(out, ref)
    x, y = _luma(out), _luma(ref)
    win = _gaussian(min(11, x.shape[-2], x.shape[-1]) // 2 * 2 + 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mx**2
    syy = F.conv2d(y * y, win) - my**2
    sxy = F.conv2d(x * y, win) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)


def _warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    import cv2

    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_error(out: np.ndarray, ref: np.ndarray | None = None) -> float:
    """Flow warping error (x 1e3 on [0, 1] intensities, as the paper reports E*_warp).

    Flow comes from `ref` (the ground truth when there is one, else the output itself).
    """
    if out.ndim != 4 or len(out) < 2:
        raise InputError(f"warp_error needs a clip of at least 2 frames, got shape {out.shape}")
    src = out if ref is None else ref
    errors = []
    for t in range(len(out) - 1):
        fwd, bwd = _flow(src[t], src[t + 1]), _flow(src[t + 1], src[t])
        # Occlusion: forward flow plus the backward flow at the forward target should cancel.
        back_at_fwd = _warp(bwd, fwd)
        mismatch = np.sum((fwd + back_at_fwd) ** 2, axis=-1)
        valid = mismatch < 0.01 * (np.sum(fwd**2, -1) + np.sum(back_at_fwd**2, -1)) + 0.5
        warped = _warp(out[t + 1].astype(np.float32) / 255, fwd)
        diff = ((out[t].astype(np.float32) / 255 - warped) ** 2).sum(-1)
        if valid.any():
            errors.append(float(diff[valid].mean()))
    return 1e3 * float(np.mean(errors)) if errors else 0.0


FULL_REFERENCE = {"psnr": psnr, "ssim": ssim}


def compute(names: list[str], out: np.ndarray, ref: np.ndarray | None, *, iqa=None) -> dict[str, float]:
    """The named metrics of one output clip; `iqa` maps no-reference names to loaded scorers."""
    values = {}
    for name in names:
        if name in FULL_REFERENCE:
            if ref is None:
                continue
            values[name] = FULL_REFERENCE[name](out, ref)
        elif name == "warp_error":
            values[name] = warp_error(out, ref)
        elif iqa and name in iqa:
            values[name] = float(iqa[name](out))
        else:
            raise InputError(f"evaluate.metrics: unknown or unavailable metric {name!r} (known: psnr, ssim, "
                             "warp_error, and musiq/clipiqa/maniqa/niqe with local weights)")
    return values
