"""Input checks and small sampling helpers shared by the pixel-space degradations."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from gvr.errors import InputError


def check_clip(frames: object, *, min_frames: int = 1, name: str = "degrade") -> np.ndarray:
    """The clip as a uint8 `(T, H, W, 3)` array, or InputError saying what is wrong with it."""
    if not isinstance(frames, np.ndarray):
        raise InputError(f"{name}: expected a numpy uint8 array (T, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise InputError(f"{name}: expected uint8 frames, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"{name}: expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] < min_frames:
        raise InputError(f"{name}: needs at least {min_frames} frames, got {frames.shape[0]}")
    if min(frames.shape[1:3]) < 2:
        raise InputError(f"{name}: frames of {frames.shape[1]}x{frames.shape[2]} are too small")
    return frames


def check_rng(rng: object, name: str = "degrade") -> np.random.Generator:
    """The generator itself; a global-state RandomState or a seed would break reproducibility silently."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def uniform(rng: np.random.Generator, interval: Sequence[float]) -> float:
    """One draw from `[low, high]`."""
    return float(rng.uniform(interval[0], interval[1]))


def walk(rng: np.random.Generator, start: float, step: float, interval: Sequence[float], n: int) -> np.ndarray:
    """`n` values of a clipped random walk from `start` with steps in `[-step, step]` (all `start` if step=0)."""
    values = np.full(n, start, dtype=np.float64)
    if step > 0:
        for i in range(1, n):
            values[i] = np.clip(values[i - 1] + rng.uniform(-step, step), interval[0], interval[1])
    return values


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float frames `(..., W, C)` in [0, 1] -> uint8, rounded and clipped."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1])  # OpenCV saturates and rounds in one pass
    return cv2.addWeighted(flat, 255.0, flat, 0.0, 0.0, dtype=cv2.CV_8U).reshape(x.shape)
