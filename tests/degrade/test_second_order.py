"""RealBasicVSR-style second-order degradation: contract, determinism, kernels, real degradation."""

import cv2
import numpy as np
import pytest

from gvr.config import DegradeRoundParams, SecondOrderParams, SecondRoundParams, load_params
from gvr.degrade import second_order as so
from gvr.errors import ConfigError, InputError

SIZE = (48, 64)


def textured_clip(t=9, h=96, w=128, seed=0):
    """Smooth colour texture plus fine grey detail (what 4:2:0 video keeps), drifting right by 2 px per frame."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((h // 8, w // 8 + 4, 3)).astype(np.float32), (w + 32, h),
                        interpolation=cv2.INTER_CUBIC)
    fine = rng.random((h, w + 32, 1)).astype(np.float32)
    img = np.clip(0.7 * coarse + 0.3 * fine, 0, 1)
    return np.stack([(img[:, 2 * i:2 * i + w] * 255).astype(np.uint8) for i in range(t)])


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def high_freq(x):
    return float(np.mean([cv2.Laplacian(f, cv2.CV_64F).var() for f in x]))


def clean_lr(frames, size=SIZE):
    return np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA) for f in frames])


def quiet_config(**round_overrides) -> SecondOrderParams:
    """Everything off except what the test switches on: blur, resize, noise, JPEG, video, sinc."""
    off = dict(blur_prob=0.0, resize_probs=[0, 0, 1], noise_prob=0.0, jpeg_prob=0.0, video_prob=0.0)
    off.update(round_overrides)
    return SecondOrderParams(first=DegradeRoundParams(**off), second=SecondRoundParams(**off),
                             interpolations=["area"], final_sinc_prob=0.0)


def test_shape_dtype_and_odd_sizes():
    frames = textured_clip()
    out = so.degrade_video(frames, SIZE, np.random.default_rng(0))
    assert out.shape == (9, *SIZE, 3) and out.dtype == np.uint8
    odd = so.degrade_video(frames[:, :95, :127], (45, 61), np.random.default_rng(1))
    assert odd.shape == (9, 45, 61, 3)


@pytest.mark.parametrize("shape, size", [((3, 64, 96), (32, 48)), ((2, 2, 2), (2, 2)), ((2, 17, 9), (5, 3)),
                                         ((2, 33, 47), (64, 96))])
def test_tiny_and_odd_clips_survive_every_draw(shape, size):
    frames = (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.uint8)
    for seed in range(12):
        assert so.degrade_video(frames, size, np.random.default_rng(seed)).shape == (shape[0], *size, 3)


def test_same_seed_same_output_other_seed_differs():
    frames = textured_clip()
    a = so.degrade_video(frames, SIZE, np.random.default_rng(7))
    b = so.degrade_video(frames, SIZE, np.random.default_rng(7))
    c = so.degrade_video(frames, SIZE, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_really_degrades_but_keeps_content():
    frames = textured_clip()
    ref = clean_lr(frames)
    scores = [psnr(so.degrade_video(frames, SIZE, np.random.default_rng(s)), ref) for s in range(6)]
    assert all(10 < p < 40 for p in scores), scores  # visibly worse than a clean resize, same picture
    assert np.mean(scores) < 30


def test_blur_only_removes_high_frequencies():
    frames = textured_clip()
    cfg = quiet_config(blur_prob=1.0, blur_sigma=[2.0, 3.0], kernel_probs=[1, 0, 0, 0, 0, 0, 0])
    out = so.degrade_video(frames, SIZE, np.random.default_rng(0), cfg)
    assert high_freq(out) < 0.7 * high_freq(clean_lr(frames))


def test_everything_off_is_a_plain_resize():
    frames = textured_clip()
    out = so.degrade_video(frames, SIZE, np.random.default_rng(0), quiet_config())
    assert np.abs(out.astype(int) - clean_lr(frames)).max() <= 1  # float vs uint8 rounding


def test_parameters_are_shared_across_frames_without_drift():
    static = np.repeat(textured_clip(t=1), 6, axis=0)
    cfg = quiet_config(blur_prob=1.0, noise_prob=0.0, jpeg_prob=1.0, resize_probs=[0.2, 0.7, 0.1])
    cfg.drift = 0.0
    out = so.degrade_video(static, SIZE, np.random.default_rng(3), cfg)
    assert all(np.array_equal(out[0], f) for f in out[1:])


def test_noise_is_fresh_per_frame():
    static = np.repeat(textured_clip(t=1), 4, axis=0)
    cfg = quiet_config(noise_prob=1.0)
    out = so.degrade_video(static, SIZE, np.random.default_rng(0), cfg)
    assert not np.array_equal(out[0], out[1])


@pytest.mark.parametrize("kind", so.KERNELS)
def test_kernels_are_normalised(kind):
    k = so.blur_kernel(kind, 15, 2.0, 0.8, 0.3, beta_gaussian=2.0, beta_plateau=1.5, omega=1.5)
    assert k.shape == (15, 15) and k.dtype == np.float32
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert k[7, 7] == k.max()


def test_anisotropic_kernel_follows_its_angle():
    horizontal = so.blur_kernel("aniso", 21, 4.0, 1.0, 0.0)
    vertical = so.blur_kernel("aniso", 21, 4.0, 1.0, np.pi / 2)
    r = np.arange(21) - 10
    assert (horizontal.sum(0) * r**2).sum() > 4 * (horizontal.sum(1) * r**2).sum()
    np.testing.assert_allclose(vertical, horizontal.T, atol=1e-6)


def test_bessel_j1_matches_scipy():
    special = pytest.importorskip("scipy.special")
    x = np.linspace(0, 60, 601)
    np.testing.assert_allclose(so.bessel_j1(x), special.j1(x), atol=1e-10)


def test_kernels_drift_only_when_asked():
    rp = DegradeRoundParams(kernel_probs=[0, 1, 0, 0, 0, 0, 0])
    fixed = so.random_blur_kernels(np.random.default_rng(0), rp, 5, drift=0.0)
    walking = so.random_blur_kernels(np.random.default_rng(0), rp, 5, drift=1.0)
    assert all(np.array_equal(fixed[0], k) for k in fixed)
    assert not np.array_equal(walking[0], walking[-1])


@pytest.mark.parametrize("codec", ["libx264", "h264", "mpeg4"])
def test_video_roundtrip_keeps_odd_shapes(codec):
    frames = textured_clip(t=5, h=47, w=63)
    out = so.video_roundtrip(frames, codec, 20_000)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert psnr(out, frames) > 20


def test_video_roundtrip_costs_quality_at_low_bitrate():
    frames = textured_clip(t=5)
    low, high = (so.video_roundtrip(frames, "libx264", b) for b in (2_000, 100_000))
    assert psnr(low, frames) < psnr(high, frames) - 2


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((4, 32, 32), np.uint8), "(T, H, W, 3)"),
    (np.zeros((0, 32, 32, 3), np.uint8), "at least 1"),
    ([[0]], "numpy"),
])
def test_bad_frames_raise_input_error(bad, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        so.degrade_video(bad, SIZE, np.random.default_rng(0))


@pytest.mark.parametrize("size", [(48,), (0, 64), (48.0, 64), "48x64"])
def test_bad_size_raises_input_error(size):
    with pytest.raises(InputError, match="size"):
        so.degrade_video(textured_clip(t=2), size, np.random.default_rng(0))


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="Generator"):
        so.degrade_video(textured_clip(t=2), SIZE, 0)


def test_params_section_loads_and_validates():
    params = load_params(None, overrides=["degrade.second_order.second.blur_prob=0.5",
                                          "degrade.second_order.drift=0"])
    cfg = params.degrade.second_order
    assert cfg.second.blur_prob == 0.5 and cfg.second.blur_sigma == [0.2, 1.5]  # second round keeps its own defaults
    assert cfg.drift == 0.0
    with pytest.raises(ConfigError, match="degrade.second_order.first.blur_sigma"):
        load_params(None, overrides=["degrade.second_order.first.blur_sigma=[3, 1]"])
    with pytest.raises(ConfigError, match="kernel_sizes"):
        load_params(None, overrides=["degrade.second_order.first.kernel_sizes=[4, 6]"])
