"""Video metrics: known values, monotonicity, and input checks."""

import numpy as np
import pytest

from gvr.errors import InputError
from gvr.eval.metrics import compute, psnr, ssim, warp_error


def clip(seed=0, t=4, h=48, w=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    import cv2

    base = cv2.GaussianBlur(base, (5, 5), 1.5)
    return np.stack([np.roll(base, i, axis=1) for i in range(t)]).clip(0, 255).astype(np.uint8)


def test_psnr_known_value():
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[...] = 110  # mse 100 -> 10 log10(255^2 / 100)
    assert psnr(b, a) == pytest.approx(10 * np.log10(255**2 / 100), rel=1e-9)
    assert psnr(a, a) == 100.0


def test_ssim_identity_and_degradation():
    a = clip()
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    worse = np.clip(a.astype(int) + np.random.default_rng(1).integers(-80, 81, a.shape), 0, 255).astype(np.uint8)
    assert 1 > ssim(noisy, a) > ssim(worse, a) > 0
    assert psnr(noisy, a) > psnr(worse, a)


def test_warp_error_is_low_for_consistent_motion_and_high_for_flicker():
    a = clip(t=5)
    flicker = a.copy()
    flicker[1::2] = (255 - flicker[1::2])
    assert warp_error(a) < warp_error(flicker, a) / 10


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8),
                                 np.zeros((2, 8, 8, 4), np.uint8)])
def test_bad_clips_raise(bad):
    with pytest.raises(InputError):
        psnr(bad, bad)


def test_shape_mismatch_and_unknown_metric():
    with pytest.raises(InputError, match="differ in shape"):
        psnr(clip(h=48), clip(h=40))
    with pytest.raises(InputError, match="unknown or unavailable metric 'lpips'"):
        compute(["lpips"], clip(), clip())


def test_compute_skips_reference_metrics_without_reference():
    out = compute(["psnr", "warp_error"], clip(), None)
    assert set(out) == {"warp_error"}
