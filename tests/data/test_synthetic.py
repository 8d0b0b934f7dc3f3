"""Synthetic clips: deterministic, natural-ish statistics, and the variants fail the right filters."""

import numpy as np
import pytest

from gvr.data.curate import brightness, laplacian_variance
from gvr.data.synthetic import (
    ACCEPTABLE_KINDS,
    KINDS,
    LUMA_BETA,
    pink_noise,
    synthetic_clip,
    write_synthetic_dataset,
)
from gvr.io.video import read_frames, write_video


def test_deterministic_and_seed_dependent():
    a = synthetic_clip("texture", 6, (40, 56), seed=7)
    assert a.dtype == np.uint8 and a.shape == (6, 40, 56, 3)
    np.testing.assert_array_equal(a, synthetic_clip("texture", 6, (40, 56), seed=7))
    assert not np.array_equal(a, synthetic_clip("texture", 6, (40, 56), seed=8))


def test_pink_noise_has_the_requested_spectrum():
    x = pink_noise(256, 256, np.random.default_rng(0), beta=LUMA_BETA)
    assert abs(x.mean()) < 1e-5 and x.std() == pytest.approx(1, abs=1e-4)
    amp = np.abs(np.fft.fft2(x))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256), indexing="ij"))
    band = (f > 0.02) & (f < 0.4)
    slope = np.polyfit(np.log(f[band]), np.log(amp[band]), 1)[0]
    assert slope == pytest.approx(-LUMA_BETA, abs=0.1)


def test_motion_kinds_move_and_static_does_not():
    for kind in ("pan", "texture"):
        clip = synthetic_clip(kind, 4, (48, 64), seed=1).astype(np.int16)
        assert np.abs(np.diff(clip, axis=0)).mean() > 2, kind
    static = synthetic_clip("static", 4, (48, 64), seed=1)
    assert (static == static[0]).all()


@pytest.mark.parametrize("size", [(64, 96), (120, 200)])
def test_variants_fail_the_curation_filters_after_encoding(tmp_path, size):
    """Measured like curate does, on decoded H.264: only the acceptable kinds pass the default bars."""
    for kind in KINDS:
        path = tmp_path / f"{kind}.mp4"
        clip = synthetic_clip(kind, 8, size, seed=2)
        write_video(path, clip, 24)
        frames = read_frames(path)
        b, lap = brightness(frames), laplacian_variance(frames)
        ok = 20 <= b <= 235 and lap >= 30
        assert ok == (kind in ACCEPTABLE_KINDS), (kind, b, lap)
        assert {"dark": b < 20, "bright": b > 235, "blurry": lap < 30}.get(kind, True), (kind, b, lap)
        if kind in ACCEPTABLE_KINDS:  # compresses like camera footage, not like noise or flat colour
            psnr = 10 * np.log10(255**2 / np.mean((frames.astype(float) - clip) ** 2))
            assert 30 < psnr < 48, (kind, psnr)


def test_dataset_names_kinds_and_stable_prefix(tmp_path):
    small = write_synthetic_dataset(tmp_path / "a", count=2, frames=5, size=(32, 48), seed=3)
    large = write_synthetic_dataset(tmp_path / "b", count=8, frames=5, size=(32, 48), seed=3)
    assert [p.rsplit("/", 1)[1] for p in large] == [f"{i:04d}_{KINDS[i % len(KINDS)]}.mp4" for i in range(8)]
    for p, q in zip(small, large):  # adding clips never changes earlier ones
        np.testing.assert_array_equal(read_frames(p), read_frames(q))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        synthetic_clip("snow", 4, (32, 32))
    with pytest.raises(ValueError):
        synthetic_clip("pan", 0, (32, 32))
