"""Seeded synthetic clips that behave like real video for tests and demos.

Content is natural-ish: a 1/f ("pink") multi-scale texture, as natural images have roughly 1/f
amplitude spectra, plus hard-edged textured shapes for object boundaries, with smoother
lower-contrast chroma. So Laplacian variance, codec PSNR and optical flow behave like they do on
camera footage, which white noise or flat colours would not.

Kinds:
- `pan`: a camera pan (with slight zoom) over a large textured image;
- `texture`: a slowly drifting background with textured objects moving over it (occlusions);
- `static`: one still frame repeated (a tripod shot of a still scene);
- `dark` / `bright`: a pan squeezed into the bottom / top of the range (fail the brightness filter);
- `blurry`: a pan under a strong Gaussian blur (fails the Laplacian-variance filter).
Same (kind, frames, size, seed) -> the same frames, bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from gvr.config import StorageParams

KINDS = ("pan", "texture", "static", "dark", "bright", "blurry")
ACCEPTABLE_KINDS = ("pan", "texture", "static")  # the kinds curation with default thresholds keeps
LUMA_BETA = 1.25  # 1/f**beta amplitude: sharp like camera footage, compressible like it too
CAMERA_BLUR = 0.6  # px, Gaussian sigma of the simulated optics


def pink_noise(h: int, w: int, rng: np.random.Generator, beta: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-variance noise with amplitude spectrum ~ 1/f**beta, float32 (H, W)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f**-beta
    amp[0, 0] = 0.0  # no DC: the mean is set by the caller
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    x = np.fft.irfft2(spec, s=(h, w))
    return ((x - x.mean()) / (x.std() + 1e-8)).astype(np.float32)


def texture_image(h: int, w: int, rng: np.random.Generator, shapes: int | None = None) -> np.ndarray:
    """A natural-looking RGB image, float32 (H, W, 3) in [0, 255]: 1/f texture plus textured shapes."""
    import cv2

    # 1. luma: 1/f texture; chroma: smoother and weaker, as in real scenes
    y = 128 + 42 * pink_noise(h, w, rng, beta=LUMA_BETA)
    cb, cr = (18 * pink_noise(h, w, rng, beta=1.6) for _ in range(2))
    # 2. shapes with their own texture and a flat offset: hard edges, like object boundaries
    detail = 30 * pink_noise(h, w, rng, beta=LUMA_BETA)  # one field shared by all shapes: cheap
    n = shapes if shapes is not None else max(3, (h * w) // 1500)
    for _ in range(n):
        mask = np.zeros((h, w), np.uint8)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        ry, rx = (int(rng.integers(max(2, d // 20), max(3, d // 4))) for d in (h, w))
        if rng.random() < 0.5:
            cv2.ellipse(mask, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(mask, (cx - rx, cy - ry), (cx + rx, cy + ry), 1, -1)
        m = mask.astype(bool)
        y[m] = float(rng.uniform(40, 215)) + detail[m]
        cb[m] += float(rng.uniform(-15, 15))
        cr[m] += float(rng.uniform(-15, 15))
    # 3. YCbCr (BT.601, full range) -> RGB
    rgb = np.stack([y + 1.402 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.772 * cb], axis=-1)
    # 4. a camera lens never passes pixel-level steps: a slight optical blur
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), CAMERA_BLUR)
    return np.clip(rgb, 0, 255)


def _pan(frames: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A camera pan with a slight zoom over a texture larger than the frame, float32 (T, H, W, 3)."""
    import cv2

    speed = rng.uniform(0.6, 1.8)  # px per frame
    angle = rng.uniform(0, 2 * np.pi)
    vy, vx = speed * np.sin(angle), speed * np.cos(angle)
    zoom = rng.uniform(-0.002, 0.002)  # scale change per frame
    margin = int(np.ceil(speed * frames + 0.25 * max(h, w) * abs(zoom) * frames)) + 8
    canvas = texture_image(h + 2 * margin, w + 2 * margin, rng)
    out = np.empty((frames, h, w, 3), np.float32)
    cy0, cx0 = margin + h / 2 - vy * frames / 2, margin + w / 2 - vx * frames / 2
    for t in range(frames):
        s = 1.0 + zoom * t
        # output pixel (x, y) samples canvas at centre + (x - w/2) / s ...: an inverse map
        m = np.array([[1 / s, 0, cx0 + vx * t - w / (2 * s)], [0, 1 / s, cy0 + vy * t - h / (2 * s)]])
        out[t] = cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
    return out


def _moving_objects(frames: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Textured objects moving in different directions over a drifting background, float32 (T, H, W, 3)."""
    import cv2

    background = _pan(frames, h, w, rng)
    out = background
    for _ in range(int(rng.integers(2, 5))):
        sh, sw = int(rng.integers(h // 5, h // 2 + 2)), int(rng.integers(w // 5, w // 2 + 2))
        sprite = texture_image(sh, sw, rng, shapes=1)
        alpha = np.zeros((sh, sw), np.float32)
        cv2.ellipse(alpha, (sw // 2, sh // 2), (sw // 2 - 1, sh // 2 - 1), 0, 0, 360, 1.0, -1)
        alpha = cv2.GaussianBlur(alpha, (3, 3), 0.8)[..., None]  # anti-aliased edge
        y0, x0 = rng.uniform(-sh / 2, h - sh / 2), rng.uniform(-sw / 2, w - sw / 2)
        vy, vx = rng.uniform(-2.0, 2.0, size=2)
        for t in range(frames):
            m = np.array([[1.0, 0, x0 + vx * t], [0, 1.0, y0 + vy * t]])
            layer = cv2.warpAffine(sprite, m, (w, h), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_CONSTANT)
            a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
            out[t] = out[t] * (1 - a) + layer * a
    return out


def synthetic_clip(kind: str, frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """One clip of `kind` (see KINDS) as uint8 (T, H, W, 3) RGB; deterministic in all arguments."""
    import cv2

    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r} (known: {', '.join(KINDS)})")
    if frames < 1 or min(size) < 8:
        raise ValueError(f"need frames >= 1 and size >= 8x8, got {frames} frames of {size}")
    h, w = size
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "texture":
        clip = _moving_objects(frames, h, w, rng)
    elif kind == "static":
        clip = np.repeat(texture_image(h, w, rng)[None], frames, axis=0)
    else:
        clip = _pan(frames, h, w, rng)
    if kind == "dark":
        clip = clip * 0.08  # mean ~10 of 255
    elif kind == "bright":
        clip = 255 - (255 - clip) * 0.1  # mean ~243
    elif kind == "blurry":
        sigma = max(h, w) / 32  # strong enough at any size: detail gone, layout kept
        clip = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in clip])
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)


def write_synthetic_dataset(dest_dir: str | os.PathLike, *, count: int = len(KINDS), frames: int = 32,
                            size: tuple[int, int] = (64, 96), seed: int = 0, kinds: Sequence[str] = KINDS,
                            fps: float = 24.0, crf: int = 18,
                            storage: StorageParams | None = None) -> list[str]:
    """Write `count` clips cycling through `kinds` as `{i:04d}_{kind}.mp4` under `dest_dir`; returns paths.

    Clip i uses seed `seed + i`, so adding clips never changes the earlier ones. `dest_dir` may be
    local or s3://; each file appears atomically.
    """
    from gvr.io.storage import join
    from gvr.io.video import write_video

    paths = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        path = join(dest_dir, f"{i:04d}_{kind}.mp4")
        write_video(path, synthetic_clip(kind, frames, size, seed + i), fps, crf=crf,
                    storage=storage)
        paths.append(path)
    return paths
