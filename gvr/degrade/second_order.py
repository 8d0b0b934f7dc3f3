"""RealBasicVSR-style second-order degradation of HR clips into LR clips (Chan et al. 2022b).

Two rounds of {blur, random resize, noise, JPEG} with video compression after the first round, then
the final step {video compression, resize to the LR size + sinc filter} in random order, as in
RealBasicVSR's training pipeline. Every parameter is drawn once per clip; as in RealBasicVSR, blur,
noise and JPEG parameters then take a small clipped random walk from frame to frame (`cfg.drift`
scales its step sizes; 0 keeps them fixed), so a clip looks like one camera and one encoder.

Choices where RealBasicVSR's recipe needed adapting to full frames:
- resize scales are relative to the size each round starts at (as in RealBasicVSR); intermediate
  sizes are rounded to even numbers (4:2:0 video) and kept >= 8 pixels;
- video bitrates are given in bits per frame per HR pixel (`cfg.video_bpp`): RealBasicVSR's
  1e4..1e5 bit/frame on 256x256 crops is 0.15..1.5, so large frames get proportionally more bits
  (and tiny ones at least 1000, x264's floor);
- Poisson noise is drawn exactly where the expected count is below 50 and from its normal
  approximation above (indistinguishable after 8-bit quantisation, several times faster);
- the unsharp-masked GT target of RealBasicVSR is a training-loss choice and is not made here;
- JPEG gets BGR frames, as OpenCV expects (RealBasicVSR passed RGB, swapping red and blue weights);
- x264 runs with the `veryfast` preset (`cfg.video_preset`; RealBasicVSR ran FFmpeg's `medium`,
  3x slower) on a fixed 4 threads, so a seed gives the same bitstream on any machine.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np

from gvr.config import DegradeRoundParams, SecondOrderParams
from gvr.degrade.common import check_clip, check_rng, to_uint8, uniform, walk
from gvr.errors import GVRError, InputError

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc")
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                  "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
# RealBasicVSR's per-frame random-walk steps (scaled by cfg.drift)
STEPS = {"sigma": 0.02, "angle": 0.31416, "beta_gaussian": 0.05, "beta_plateau": 0.1, "omega": 0.0628,
         "gaussian_sigma": 0.1, "poisson_scale": 0.005, "jpeg_quality": 3.0}
MIN_SIDE = 8
PRESET_CODECS = ("libx264", "h264", "libx265", "hevc")
MIN_BITRATE = 1000  # bit/frame; x264 counts in kbit and rejects less
POISSON_EXACT_BELOW = 50.0


def degrade_video(frames: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                  cfg: SecondOrderParams | None = None) -> np.ndarray:
    """Degrade an HR clip into an LR clip with RealBasicVSR's second-order pipeline.

    Args:
        frames: uint8 `(T, H, W, 3)` RGB clip.
        size: `(H_lr, W_lr)` of the result.
        rng: the only source of randomness; the same seed gives the same clip.
        cfg: pipeline parameters; None = RealBasicVSR's.

    Returns:
        uint8 `(T, H_lr, W_lr, 3)` RGB clip.
    """
    cfg = cfg if cfg is not None else SecondOrderParams()
    frames = check_clip(frames, name="second-order degradation")
    rng = check_rng(rng, "second-order degradation")
    size = _check_size(size)
    hr_pixels = frames.shape[1] * frames.shape[2]
    x = frames.astype(np.float32) * np.float32(1 / 255)  # (T, H, W, 3) in [0, 1]

    # 1. first round, then video compression
    x = _round(x, rng, cfg.first, cfg)
    if rng.random() < cfg.first.video_prob:
        x = _random_video_compression(x, rng, cfg, hr_pixels)
    # 2. second round
    x = _round(x, rng, cfg.second, cfg)
    # 3. {video compression, resize to `size` + sinc} in random order
    order = [0, 1] if not cfg.shuffle_final or rng.random() < 0.5 else [1, 0]
    for step in order:
        if step == 1:
            x = _final_resize(x, size, rng, cfg)
        elif rng.random() < cfg.second.video_prob:
            x = _random_video_compression(x, rng, cfg, hr_pixels)
    return to_uint8(x)


def _check_size(size: object) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 2 for s in size)
    if not ok:
        raise InputError(f"second-order degradation: size must be (H, W), two integers >= 2, got {size!r}")
    return int(size[0]), int(size[1])


def _round(x: np.ndarray, rng: np.random.Generator, rp: DegradeRoundParams,
           cfg: SecondOrderParams) -> np.ndarray:
    """One round: blur, random resize, noise, JPEG, each with its probability."""
    if rng.random() < rp.blur_prob:
        x = filter_frames(x, random_blur_kernels(rng, rp, len(x), cfg.drift))
    x = _random_resize(x, rng, rp, cfg.interpolations)
    if rng.random() < rp.noise_prob:
        x = _random_noise(x, rng, rp, cfg.drift)
    if rng.random() < rp.jpeg_prob:
        x = _random_jpeg(x, rng, rp, cfg.drift)
    return x


# --------------------------------------------------------------------------------------------
# Blur kernels (Real-ESRGAN's families)
# --------------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.meshgrid(r, r)  # x (columns), y (rows)


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
    """`p^T S^-1 p` on a centred grid, `S = R(angle) diag(sigma_x^2, sigma_y^2) R(angle)^T`."""
    x, y = _grid(size)
    u = math.cos(angle) * x + math.sin(angle) * y
    v = -math.sin(angle) * x + math.cos(angle) * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def bessel_j1(x: np.ndarray) -> np.ndarray:
    """Bessel function J1 via its integral over one period (trapezoid rule, exact to ~1e-12 for |x| < 60)."""
    tau = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    return np.cos(tau - np.asarray(x, dtype=np.float64)[..., None] * np.sin(tau)).mean(-1)


def sinc_kernel(size: int, omega: float) -> np.ndarray:
    """Circular low-pass (2D sinc) kernel with cutoff `omega` in rad/pixel, normalised to sum 1."""
    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * bessel_j1(omega * r) / (2 * np.pi * r)
    k[r == 0] = omega**2 / (4 * np.pi)
    return (k / k.sum()).astype(np.float32)


def blur_kernel(kind: str, size: int, sigma_x: float, sigma_y: float, angle: float,
                beta_gaussian: float = 1.0, beta_plateau: float = 1.0, omega: float = np.pi) -> np.ndarray:
    """One normalised `size x size` kernel of a Real-ESRGAN family (see KERNELS)."""
    if kind == "sinc":
        return sinc_kernel(size, omega)
    if kind not in KERNELS:
        raise ValueError(f"unknown blur kernel {kind!r}; known: {KERNELS}")
    if not kind.endswith("aniso"):
        sigma_y, angle = sigma_x, 0.0
    q = _mahalanobis(size, sigma_x, sigma_y, angle)
    if kind.startswith("generalized"):
        k = np.exp(-0.5 * q**beta_gaussian)
    elif kind.startswith("plateau"):
        k = 1.0 / (q**beta_plateau + 1.0)
    else:
        k = np.exp(-0.5 * q)
    return (k / k.sum()).astype(np.float32)


def _walked(rng: np.random.Generator, interval, step: float, n: int) -> np.ndarray:
    """A parameter drawn in `interval` for the first frame, walking by up to `step` per frame."""
    return walk(rng, uniform(rng, interval), step, interval, n)


def random_blur_kernels(rng: np.random.Generator, rp: DegradeRoundParams, n: int, drift: float) -> list[np.ndarray]:
    """`n` per-frame kernels of one randomly drawn family and size, parameters walking over frames."""
    probs = np.asarray(rp.kernel_probs, dtype=np.float64)
    kind = KERNELS[rng.choice(len(KERNELS), p=probs / probs.sum())]
    size = int(rng.choice(rp.kernel_sizes))
    omega_range = (np.pi / 3, np.pi) if size < 13 else (np.pi / 5, np.pi)  # Real-ESRGAN's sinc cutoffs
    sx = _walked(rng, rp.blur_sigma, STEPS["sigma"] * drift, n)
    sy = _walked(rng, rp.blur_sigma, STEPS["sigma"] * drift, n)
    angle = _walked(rng, (-np.pi, np.pi), STEPS["angle"] * drift, n)
    beta_g = _walked(rng, rp.beta_gaussian, STEPS["beta_gaussian"] * drift, n)
    beta_p = _walked(rng, rp.beta_plateau, STEPS["beta_plateau"] * drift, n)
    omega = _walked(rng, omega_range, STEPS["omega"] * drift, n)
    return [blur_kernel(kind, size, sx[i], sy[i], angle[i], beta_g[i], beta_p[i], omega[i]) for i in range(n)]


def filter_frames(x: np.ndarray, kernels: list[np.ndarray]) -> np.ndarray:
    """Convolve frame i with kernels[i] (reflected borders)."""
    out = np.empty_like(x)
    for i, k in enumerate(kernels):
        cv2.filter2D(x[i], -1, k, dst=out[i], borderType=cv2.BORDER_REFLECT_101)
    return out


# --------------------------------------------------------------------------------------------
# Resize, noise, JPEG, video
# --------------------------------------------------------------------------------------------


def _even(v: float) -> int:
    return max(MIN_SIDE, 2 * int(round(v / 2)))


def resize_frames(x: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """Resize every frame to `size` (H, W)."""
    h, w = size
    out = np.empty((len(x), h, w, x.shape[-1]), dtype=x.dtype)
    for i in range(len(x)):
        cv2.resize(x[i], (w, h), dst=out[i], interpolation=interpolation)
    return out


def _pick_interpolation(rng: np.random.Generator, names: list[str]) -> int:
    return INTERPOLATIONS[names[rng.integers(len(names))]]


def _random_resize(x: np.ndarray, rng: np.random.Generator, rp: DegradeRoundParams,
                   interpolations: list[str]) -> np.ndarray:
    probs = np.asarray(rp.resize_probs, dtype=np.float64)
    mode = rng.choice(3, p=probs / probs.sum())  # up, down, keep
    lo, hi = rp.resize_scale
    scale = (rng.uniform(1, hi), rng.uniform(lo, 1), 1.0)[mode]
    interpolation = _pick_interpolation(rng, interpolations)
    h, w = x.shape[1:3]
    size = (_even(h * scale), _even(w * scale))
    return x if size == (h, w) else resize_frames(x, size, interpolation)


def _random_noise(x: np.ndarray, rng: np.random.Generator, rp: DegradeRoundParams, drift: float) -> np.ndarray:
    """Gaussian or Poisson noise, colour or grey, level walking over frames; modifies `x` in place."""
    t, h, w, _ = x.shape
    gaussian = rng.random() < rp.gaussian_noise_prob
    gray = rng.random() < rp.gray_noise_prob
    channels = 1 if gray else 3
    if gaussian:
        sigma = _walked(rng, rp.gaussian_sigma, STEPS["gaussian_sigma"] * drift, t) / 255.0
        for i in range(t):
            x[i] += rng.standard_normal((h, w, channels), dtype=np.float32) * np.float32(sigma[i])
        return x
    scale = _walked(rng, rp.poisson_scale, STEPS["poisson_scale"] * drift, t)
    for i in range(t):
        img = to_uint8(x[i])  # (H, W, 3): 8-bit levels, as Real-ESRGAN counts photons on
        if gray:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]  # (H, W, 1)
        levels = np.count_nonzero(np.bincount(img.ravel(), minlength=256))
        vals = 2.0 ** math.ceil(math.log2(max(levels, 2)))
        lam = img.astype(np.float32) * np.float32(vals / 255)
        x[i] += _poisson_deviation(rng, lam) * np.float32(scale[i] / vals)
    return x


def _poisson_deviation(rng: np.random.Generator, lam: np.ndarray) -> np.ndarray:
    """`Poisson(lam) - lam`: exact for small means, normal approximation for large ones."""
    out = np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
    small = lam < POISSON_EXACT_BELOW
    out[small] = rng.poisson(lam[small]) - lam[small]
    return out


def _random_jpeg(x: np.ndarray, rng: np.random.Generator, rp: DegradeRoundParams, drift: float) -> np.ndarray:
    """Per-frame JPEG with a quality walking over frames."""
    quality = np.rint(_walked(rng, rp.jpeg_quality, STEPS["jpeg_quality"] * drift, len(x))).astype(int)
    out = np.empty_like(x)
    for i in range(len(x)):
        bgr = cv2.cvtColor(to_uint8(x[i]), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality[i])])
        if not ok:
            raise GVRError("second-order degradation: OpenCV could not JPEG-encode a frame")
        rgb = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.multiply(rgb, np.float32(1 / 255), out=out[i])
    return out


def video_roundtrip(frames: np.ndarray, codec: str, bitrate: int, preset: str = "medium") -> np.ndarray:
    """Encode uint8 `(T, H, W, 3)` frames to an in-memory MP4 with `codec` at `bitrate` bit/frame and decode.

    `preset` is the x264/x265 speed preset (other codecs have none).
    """
    try:
        import av
    except ImportError:
        raise GVRError("second-order degradation: video compression needs PyAV (pip install av), "
                       "or set degrade.second_order.*.video_prob to 0") from None
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2  # 4:2:0 needs even sizes
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        options = {"preset": preset} if codec in PRESET_CODECS else {}
        stream = container.add_stream(codec, rate=1, options=options)  # 1 fps: bit_rate is bits per frame
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.bit_rate = int(bitrate)
        stream.codec_context.thread_count = 4  # fixed, so the bitstream does not depend on the machine's core count
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode(None))
    buf.seek(0)
    with av.open(buf, "r", format="mp4") as container:
        out = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    if len(out) != t:
        raise GVRError(f"second-order degradation: {codec} round trip returned {len(out)} of {t} frames")
    return out[:, :h, :w]


def _random_video_compression(x: np.ndarray, rng: np.random.Generator, cfg: SecondOrderParams,
                              hr_pixels: int) -> np.ndarray:
    codec = cfg.codecs[rng.integers(len(cfg.codecs))]
    bitrate = max(MIN_BITRATE, int(uniform(rng, cfg.video_bpp) * hr_pixels))
    return video_roundtrip(to_uint8(x), codec, bitrate, cfg.video_preset).astype(np.float32) * np.float32(1 / 255)


def _final_resize(x: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                  cfg: SecondOrderParams) -> np.ndarray:
    """Resize to the LR size, then (with `final_sinc_prob`) a sinc filter: the ringing of sharp resampling."""
    x = resize_frames(x, size, _pick_interpolation(rng, cfg.interpolations))
    if rng.random() < cfg.final_sinc_prob:
        ksize = int(rng.choice(cfg.second.kernel_sizes))
        omega = _walked(rng, cfg.final_sinc_omega, STEPS["omega"] * cfg.drift, len(x))
        x = filter_frames(x, [sinc_kernel(ksize, w) for w in omega])
    return x
