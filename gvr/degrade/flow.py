"""Flow-based degradation (paper §3.3.1): motion-guided colour blending and block-wise motion blur.

Base T2V outputs are clean in static areas but smear hues from the previous frame into moving
regions and blur them along the motion. Both effects are driven by the DIS optical flow from each
frame to its previous frame, `cur(p) ~ prev(p + flow(p))`.

Choices the paper leaves open (all in `FlowDegradeParams`):
- flow is computed on grey frames shrunk to `flow_max_side` (default 640 px on the long side;
  frames under 16 px on a side are enlarged instead), then resized back; a pixel counts as
  moving from `motion_threshold` px/frame, fully from twice that (smoothstep), and the resulting
  weight is feathered by a small Gaussian;
- colour blending: each frame gets `ellipses` (default 2..12) ellipses centred on moving pixels,
  semi-major axis `ellipse_axis` (3..10 % of the short side) plus half the local speed,
  aspect 0.3..1, oriented along the local motion with `ellipse_jitter` rad of noise. Each ellipse
  takes `samples` hues from the previous frame, drawn from a Gaussian (std `sample_spread` x the
  axes) around the centre's corresponding location `c + lambda * flow(c)`, lambda in
  `compensation` (1 follows the motion exactly, less leaves a ghost of where content was), and
  averages them in RGB; the mean is blended into the current frame with weight
  `strength * (1 - d^2)^2`, d the normalised elliptical distance to the centre (1 on the rim), so
  the centre is hit hardest and the rim not at all. The first frame has no previous frame and is
  not blended;
- motion blur: the frame is cut into `block_size` px blocks; a block's kernel is a line whose
  length is `blur_scale` (drawn once per clip, 0.5..1.5) times the mean motion of its moving
  pixels, capped at `max_blur` of the short side, and whose angle is that motion's direction.
  Blocks are blended with bilinear (tent) weights between block centres so no seams appear, and
  the result is mixed in by the per-pixel motion weight, so static pixels stay untouched even
  inside a moving block. The first frame uses the flow to the second frame;
- blending comes before blur (the arXiv version's order); hues come from the clean previous frame,
  so smears do not accumulate over the clip.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from gvr.config import FlowDegradeParams
from gvr.degrade.common import check_clip, check_rng, to_uint8, uniform

DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
MIN_FLOW_SIDE = 16  # px; smaller frames are enlarged for the flow (DIS rejects sides under 12)


def degrade_video(frames: np.ndarray, rng: np.random.Generator, cfg: FlowDegradeParams | None = None) -> np.ndarray:
    """Apply flow-based colour blending and motion blur to a clip.

    Args:
        frames: uint8 `(T, H, W, 3)` RGB clip, T >= 2.
        rng: the only source of randomness; the same seed gives the same clip.
        cfg: degradation parameters; None = the defaults documented in this module.

    Returns:
        uint8 `(T, H, W, 3)`, static regions unchanged.
    """
    cfg = cfg if cfg is not None else FlowDegradeParams()
    frames = check_clip(frames, min_frames=2, name="flow-based degradation")
    rng = check_rng(rng, "flow-based degradation")
    t, h, w, _ = frames.shape
    short = min(h, w)

    # 1. clip-level draws: which effects, and how long the blur is per unit of motion
    blend = rng.random() < cfg.blend_prob
    blur = rng.random() < cfg.blur_prob
    blur_scale = uniform(rng, cfg.blur_scale)
    max_len = max(1.0, cfg.max_blur * short)

    # 2. per frame: motion field, colour blending, motion blur
    flows = flows_to_previous(frames, cfg.dis_preset, cfg.flow_max_side)  # (T, H, W, 2)
    out = np.empty_like(frames)
    for i in range(t):
        weight = motion_weight(flows[i], cfg.motion_threshold, short)
        x = frames[i].astype(np.float32)
        if blend and i > 0:
            x = blend_colours(x, frames[i - 1], flows[i], weight, rng, cfg)
        if blur:
            x = motion_blur(x, flows[i], weight, blur_scale, max_len, cfg.block_size)
        out[i] = to_uint8(x * np.float32(1 / 255))
    return out


# --------------------------------------------------------------------------------------------
# Motion field
# --------------------------------------------------------------------------------------------


def flows_to_previous(frames: np.ndarray, preset: str = "medium", max_side: int = 640) -> np.ndarray:
    """DIS flow of each frame to its previous one, `(T, H, W, 2)` as (dx, dy) in input pixels.

    Frame 0 has no previous frame; it gets its flow to frame 1, whose magnitude and axis are what
    motion blur needs.
    """
    t, h, w, _ = frames.shape
    scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
    scale = max(scale, MIN_FLOW_SIDE / min(h, w))  # DIS needs a few patches per side
    sh, sw = round(h * scale), round(w * scale)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    if (sh, sw) != (h, w):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        grey = [cv2.resize(g, (sw, sh), interpolation=interpolation) for g in grey]
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    pairs = [(0, 1)] + [(i, i - 1) for i in range(1, t)]
    out = np.empty((t, h, w, 2), dtype=np.float32)
    gain = np.array([w / sw, h / sh], dtype=np.float32)  # small-frame pixels -> input pixels
    for i, (a, b) in enumerate(pairs):
        flow = dis.calc(grey[a], grey[b], None)  # grey[a](p) ~ grey[b](p + flow(p))
        if (sh, sw) != (h, w):
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        out[i] = flow * gain
    return out


def motion_weight(flow: np.ndarray, threshold: float, short: int) -> np.ndarray:
    """Per-pixel weight in [0, 1]: 0 below `threshold` px/frame, 1 from twice that, feathered."""
    speed = np.hypot(flow[..., 0], flow[..., 1])
    r = np.clip(speed / threshold - 1.0, 0.0, 1.0)
    weight = r * r * (3 - 2 * r)  # smoothstep
    sigma = max(1.0, 0.005 * short)
    return cv2.GaussianBlur(weight, (0, 0), sigma)


# --------------------------------------------------------------------------------------------
# Colour blending
# --------------------------------------------------------------------------------------------


def blend_colours(cur: np.ndarray, prev: np.ndarray, flow: np.ndarray, weight: np.ndarray,
                  rng: np.random.Generator, cfg: FlowDegradeParams) -> np.ndarray:
    """Blend previous-frame hues into elliptical patches of the moving regions of `cur` (float, 0..255)."""
    h, w = weight.shape
    short = min(h, w)
    moving = np.flatnonzero(weight > 0.5)
    if moving.size == 0:
        return cur
    out = cur.copy()
    n = int(rng.integers(cfg.ellipses[0], cfg.ellipses[1] + 1))
    for idx in rng.choice(moving, size=n):
        cy, cx = divmod(int(idx), w)
        fx, fy = (float(v) for v in flow[cy, cx])
        # 1. the ellipse: along the motion, longer for faster motion
        angle = math.atan2(fy, fx) + rng.normal(0.0, cfg.ellipse_jitter)
        a = uniform(rng, cfg.ellipse_axis) * short + 0.5 * math.hypot(fx, fy)
        b = a * uniform(rng, cfg.ellipse_aspect)
        # 2. Gaussian sampling of hues around the corresponding location in the previous frame
        lam = uniform(rng, cfg.compensation)
        colour = _sample_hue(prev, (cx + lam * fx, cy + lam * fy), a, b, angle, rng, cfg)
        # 3. distance-weighted blend: strongest at the centre, zero on the rim
        strength = uniform(rng, cfg.blend_strength)
        _blend_ellipse(out, (cx, cy), a, b, angle, colour, strength)
    return out


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _sample_hue(prev: np.ndarray, centre: tuple[float, float], a: float, b: float, angle: float,
                rng: np.random.Generator, cfg: FlowDegradeParams) -> np.ndarray:
    """Mean RGB of `cfg.samples` previous-frame pixels drawn from an ellipse-shaped Gaussian."""
    h, w = prev.shape[:2]
    offsets = rng.standard_normal((cfg.samples, 2)) * (cfg.sample_spread * np.array([a, b]))
    xy = np.asarray(centre) + offsets @ _rotation(angle).T  # (samples, 2) as (x, y)
    xs = np.clip(np.rint(xy[:, 0]), 0, w - 1).astype(int)
    ys = np.clip(np.rint(xy[:, 1]), 0, h - 1).astype(int)
    return prev[ys, xs].astype(np.float32).mean(0)  # (3,)


def _blend_ellipse(img: np.ndarray, centre: tuple[int, int], a: float, b: float, angle: float,
                   colour: np.ndarray, strength: float) -> None:
    """In place: `img += strength * (1 - d^2)^2 * (colour - img)` inside the ellipse."""
    h, w = img.shape[:2]
    cx, cy = centre
    r = int(math.ceil(a))
    y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs - cx, ys - cy
    c, s = math.cos(angle), math.sin(angle)
    d2 = ((c * dx + s * dy) / a) ** 2 + ((-s * dx + c * dy) / b) ** 2
    wgt = strength * np.clip(1.0 - d2, 0.0, 1.0) ** 2  # (h', w')
    patch = img[y0:y1, x0:x1]
    patch += wgt[..., None] * (colour - patch)


# --------------------------------------------------------------------------------------------
# Motion blur
# --------------------------------------------------------------------------------------------


def line_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised, anti-aliased line kernel covering `length` pixels along `angle` (rad, image axes)."""
    size = 2 * int(math.ceil(length / 2)) + 1
    c = size // 2
    n = max(2, int(math.ceil(4 * length)))
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, n)
    xs, ys = c + t * math.cos(angle), c + t * math.sin(angle)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    k = np.zeros((size + 1, size + 1), dtype=np.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), wgt)  # bilinear splat of the samples
    k = k[:size, :size]
    return (k / k.sum()).astype(np.float32)


def _tent_weights(n: int, block: int) -> np.ndarray:
    """`(n_blocks, n)` bilinear weights of each block centre at each pixel; columns sum to 1."""
    starts = np.arange(0, n, block)
    centres = (starts + np.minimum(starts + block, n) - 1) / 2
    if len(centres) == 1:
        return np.ones((1, n), dtype=np.float32)
    pos = np.clip(np.arange(n), centres[0], centres[-1])
    j = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, len(centres) - 2)
    frac = (pos - centres[j]) / (centres[j + 1] - centres[j])
    out = np.zeros((len(centres), n), dtype=np.float32)
    out[j, np.arange(n)] = 1 - frac
    out[j + 1, np.arange(n)] += frac
    return out


def _block_means(flow: np.ndarray, weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: weighted mean flow of its moving pixels `(nby, nbx, 2)` and total weight `(nby, nbx)`."""
    h, w = weight.shape
    nby, nbx = -(-h // block), -(-w // block)
    pad = ((0, nby * block - h), (0, nbx * block - w))
    wgt = np.pad(weight, pad).reshape(nby, block, nbx, block)
    total = wgt.sum((1, 3))
    sums = [(np.pad(flow[..., k] * weight, pad).reshape(nby, block, nbx, block)).sum((1, 3)) for k in range(2)]
    mean = np.stack(sums, -1) / np.maximum(total, 1e-6)[..., None]
    return mean, total


def motion_blur(img: np.ndarray, flow: np.ndarray, weight: np.ndarray, scale: float, max_len: float,
                block: int) -> np.ndarray:
    """Block-wise line blur along the local motion, mixed in by the per-pixel motion weight."""
    h, w = weight.shape
    mean, total = _block_means(flow, weight, block)
    length = np.minimum(scale * np.hypot(mean[..., 0], mean[..., 1]), max_len)  # (nby, nbx)
    wy, wx = _tent_weights(h, block), _tent_weights(w, block)
    r = int(math.ceil(max_len / 2)) + 1
    padded = cv2.copyMakeBorder(img, r, r, r, r, cv2.BORDER_REFLECT_101)
    delta = np.zeros_like(img)  # sum over blocks of tent weight * (blurred - img)
    for by, bx in zip(*np.nonzero((length >= 1.5) & (total >= 1.0))):
        ys, xs = np.flatnonzero(wy[by]), np.flatnonzero(wx[bx])
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        k = line_kernel(float(length[by, bx]), math.atan2(mean[by, bx, 1], mean[by, bx, 0]))
        region = padded[y0:y1 + 2 * r, x0:x1 + 2 * r]
        blurred = cv2.filter2D(region, -1, k, borderType=cv2.BORDER_REFLECT_101)[r:-r, r:-r]
        tent = wy[by, y0:y1, None] * wx[bx, None, x0:x1]
        delta[y0:y1, x0:x1] += tent[..., None] * (blurred - img[y0:y1, x0:x1])
    return img + weight[..., None] * delta
